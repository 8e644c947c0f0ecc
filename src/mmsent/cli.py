"""The `mmsent` command line: parses arguments and calls library functions; user errors exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmsent import __version__
from mmsent.errors import MmsentError
from mmsent.experiments.common import command_line, write_manifest


def _add_config_args(p: argparse.ArgumentParser, preset: bool = True) -> None:
    if preset:
        p.add_argument("--preset", help="start from a named preset (see `mmsent models`)")
    p.add_argument("--config", type=Path, help="YAML config file (defaults are used for missing keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--on-error", choices=["fail", "skip"], help="on bad guids: stop and list them, or skip them")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsent", description="Multimodal (image + text) sentiment classification.")
    parser.add_argument("--version", action="version", version=f"mmsent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("--data", type=Path, required=True, help="data set folder")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    _add_config_args(p)
    _add_common(p)

    p = sub.add_parser("evaluate", help="metrics of a run on a labelled guid list, as JSON")
    p.add_argument("--run", type=Path, required=True, action="append",
                   help="run folder; repeat it to evaluate the ensemble (mean class probabilities)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True, help="'guid,tag' file with true tags")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    _add_common(p)

    p = sub.add_parser("predict", help="write 'guid,tag' predictions for a guid list")
    p.add_argument("--run", type=Path, required=True, action="append",
                   help="run folder; repeat it to predict with the ensemble (mean class probabilities)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--guids", type=Path, required=True, help="'guid,tag' file; its tags are ignored")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    _add_common(p)

    p = sub.add_parser("run", help="train, evaluate on validation, predict the test list")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_config_args(p)
    _add_common(p)

    p = sub.add_parser("data", help="data set tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="report counts, encodings, duplicates, image sizes and problems")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--out", type=Path, default=Path("data_report.json"), help="JSON report path")

    p = sub.add_parser("compare", help="train several presets on one split and tabulate them")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--presets", required=True, help="comma-separated preset names")
    p.add_argument("--ablate", default=None,
                   help="comma-separated presets that also get text-only and image-only rows "
                        "(default: tfidf_resnet18 when compared)")
    _add_config_args(p, preset=False)
    _add_common(p)

    sub.add_parser("models", help="list encoders, heads and presets")

    p = sub.add_parser("serve", help="serve a trained run over HTTP: JSON API and a web page")
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-image-mb", type=float, default=10.0, help="largest accepted image upload, in MB")

    p = sub.add_parser("report", help="build an HTML report (and a Markdown twin) from run and experiment folders")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="run / experiment folders, or folders holding them")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write; report.md goes beside it")
    p.add_argument("--data-report", type=Path, help="JSON written by `mmsent data check`")
    _add_badcase_parsers(sub)
    return parser


def _add_badcase_parsers(sub) -> None:
    p = sub.add_parser("badcases", help="mine out-of-fold mistakes on a run's training split, with error analysis")
    p.add_argument("--run", type=Path, required=True, help="trained run folder (its config and split are used)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="experiment folder to write")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, help="fold seed (default: the run's data.split_seed)")
    _add_common(p)

    p = sub.add_parser("augment", help="write augmented copies of mined cases, with new guids and a manifest")
    p.add_argument("--badcases", type=Path, required=True, help="bad_cases.csv of `mmsent badcases`")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="augmentation folder to write (data/ + manifest.csv)")
    p.add_argument("--copies", type=int, default=2, help="copies per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-synonyms", action="store_true", help="no synonym replacement")
    _add_common(p)

    p = sub.add_parser("retrain", help="retrain a run with augmented copies; before/after on the same validation split")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--augment", type=Path, required=True, action="append", help="augmentation folder (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="new run folder")
    p.add_argument("--data", type=Path, help="data set folder (default: the one `mmsent augment` recorded)")
    _add_common(p)


def _config(args: argparse.Namespace):
    from mmsent.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "on_error", None):
        overrides.append(f"data.on_error={args.on_error}")
    return load_config(args.config, overrides, preset=getattr(args, "preset", None))


def cmd_train(args: argparse.Namespace) -> int:
    from mmsent.api import train
    from mmsent.engine.metrics import summary_line

    result = train(args.data, args.out, _config(args), quiet=args.quiet)
    write_manifest(result.run_dir, "train", command_line(args.argv))
    print(f"validation: {summary_line(result.metrics)}")
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmsent.api import evaluate

    metrics = evaluate(args.run, args.data, args.labels, quiet=args.quiet, on_error=args.on_error)
    if len(args.run) > 1:
        metrics["ensemble_of"] = [str(r) for r in args.run]
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mmsent.api import predict

    rows = predict(args.run, args.data, args.guids, args.out, quiet=args.quiet, on_error=args.on_error)
    ensemble = f" (ensemble of {len(args.run)} runs)" if len(args.run) > 1 else ""
    print(f"wrote {len(rows)} predictions to {args.out}{ensemble}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mmsent.api import run

    t0 = time.perf_counter()
    summary = run(args.data, args.out, _config(args), quiet=args.quiet)
    write_manifest(summary.run_dir, "run", command_line(args.argv))
    m = summary.metrics
    print("")
    print(f"validation (n={m['n']}): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    print(f"time: {time.perf_counter() - t0:.1f} s (encoding {m['encode_seconds']:.1f} s, training {m['train_seconds']:.1f} s)")
    print(f"predictions: {summary.predictions} ({summary.n_predictions} guids)")
    print(f"run folder: {summary.run_dir} (config.yaml, model.safetensors, metrics.json, history.csv, plots/)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from mmsent.data.check import check_dataset, format_report

    report = check_dataset(args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(format_report(report))
    print(f"JSON report: {args.out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mmsent.encoders import list_encoders
    from mmsent.heads import list_heads
    from mmsent.presets import list_presets

    print("encoders:")
    for name, desc in list_encoders().items():
        print(f"  {name:<20} {desc}")
    print("heads:")
    for name, desc in list_heads().items():
        print(f"  {name:<20} {desc}")
    print("presets:")
    for name, desc in list_presets().items():
        print(f"  {name:<20} {desc}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mmsent.experiments.compare import compare

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    ablate = None if args.ablate is None else [p.strip() for p in args.ablate.split(",") if p.strip()]
    overrides = list(args.overrides) + ([f"data.on_error={args.on_error}"] if args.on_error else [])
    result = compare(args.data, args.out, presets, config_path=args.config, overrides=overrides,
                     ablate=ablate, quiet=args.quiet, command=command_line(args.argv))
    print(result.markdown)
    print(f"results: {result.out_dir} (results.csv, results.md, figures)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mmsent.serve.app import serve

    serve(args.run, args.host, args.port, args.max_image_mb)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mmsent.reporting.report import build_report

    html_path, md_path, sections = build_report(args.runs, args.out, args.data_report)
    print(f"report: {html_path} ({len(sections)} sections: {', '.join(sections)})")
    print(f"markdown: {md_path}")
    return 0


def cmd_badcases(args: argparse.Namespace) -> int:
    from mmsent.engine.metrics import summary_line
    from mmsent.experiments.badcases import mine_bad_cases

    res = mine_bad_cases(args.run, args.data, args.out, args.folds, args.seed, args.quiet, command_line(args.argv))
    print(f"out of fold on the training split: {summary_line(res.metrics)}")
    print(f"mistakes: {res.n_bad} of {res.n_train} -> {res.out_dir / 'bad_cases.csv'}")
    print(f"error analysis: {res.out_dir / 'results.md'}, {res.out_dir / 'confusion.md'} and figures")
    print(f"time: {res.seconds:.1f} s")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from mmsent.experiments.augment import AugmentOptions, augment_bad_cases

    opts = AugmentOptions(synonyms=not args.no_synonyms)
    res = augment_bad_cases(args.badcases, args.data, args.out, args.copies, args.seed, opts, args.quiet,
                            command_line(args.argv))
    print(f"wrote {res.n_copies} copies of {res.n_sources} cases to {res.out_dir / 'data'} "
          f"(manifest {res.out_dir / 'manifest.csv'}) in {res.seconds:.1f} s")
    print(f"add them to training with: --set data.augment=[{res.out_dir}]  or  mmsent retrain --augment {res.out_dir}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from mmsent.experiments.retrain import format_comparison, retrain

    t0 = time.perf_counter()
    res = retrain(args.run, args.augment, args.out, args.data, args.quiet, command_line(args.argv))
    print(f"validation split of {args.run} (n={res.after['n']}), before = {args.run}, after = {res.run_dir}:")
    print(format_comparison(res.rows))
    print(f"time: {time.perf_counter() - t0:.1f} s; table: {res.run_dir / 'results.md'}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "run": cmd_run,
    "data": cmd_data,
    "models": cmd_models,
    "compare": cmd_compare,
    "serve": cmd_serve,
    "report": cmd_report,
    "badcases": cmd_badcases,
    "augment": cmd_augment,
    "retrain": cmd_retrain,
}


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one clear message and return 2."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except MmsentError as exc:
        print(f"mmsent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mmsent: interrupted", file=sys.stderr)
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
