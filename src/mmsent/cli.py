"""The `mmsent` command line: parses arguments and calls library functions; user errors exit with code 2."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmsent import __version__
from mmsent.allocator import return_large_blocks
from mmsent.distributed import LAUNCHABLE_COMMANDS, exit_process, leave_process_group, require_single_process
from mmsent.errors import FollowerError, MmsentError


def _add_config_args(p: argparse.ArgumentParser, preset: bool = True) -> None:
    if preset:
        p.add_argument("--preset", help="start from a named preset (see `mmsent models`)")
    p.add_argument("--config", type=Path, help="YAML config file (defaults are used for missing keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--on-error", choices=["fail", "skip"], help="on bad guids: stop and list them, or skip them")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["auto", "torch", "onnx"],
                   help="how the frozen encoders run: ONNX Runtime where their export matches torch (auto, onnx) "
                        "or torch (default: the run's runtime.backend)")


def _add_overwrite(p: argparse.ArgumentParser, what: str = "run") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing {what} at --out (the old one stays intact until the new one is complete)")


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced a run or experiment, as a user would type it."""
    args = sys.argv[1:] if argv is None else argv
    return "mmsent " + " ".join(shlex.quote(a) for a in args)


def _checked_number(text: str, convert: Callable[[str], Any], valid: Callable[[Any], bool], not_a_number: str,
                    invalid: str) -> Any:
    """An argparse value: text converted, else not_a_number; one that is not valid, else invalid ({text}, {value})."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(not_a_number.format(text=text)) from None
    if not valid(value):
        raise argparse.ArgumentTypeError(invalid.format(text=text, value=value))
    return value


def _positive_mb(text: str) -> float:
    """An argparse type: a positive, finite number of megabytes."""
    return _checked_number(text, float, lambda v: math.isfinite(v) and v > 0,
                           "{text!r} is not a number; give a size in MB such as 10",
                           "{text} is not a positive size; give a size in MB such as 10")


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return _checked_number(text, int, lambda v: v >= 1, "{text!r} is not a whole number; give one such as 16",
                           "{value} is below 1; give a whole number such as 16")


def _wait_ms(text: str) -> float:
    """An argparse type: a finite number of milliseconds, 0 or more."""
    return _checked_number(text, float, lambda v: math.isfinite(v) and v >= 0,
                           "{text!r} is not a number; give milliseconds such as 5",
                           "{text} is not a wait; give milliseconds, 0 or more, such as 5")


def _port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0 lets the system choose a free one)."""
    return _checked_number(text, int, lambda v: 0 <= v <= 65535, "{text!r} is not a port number; give one such as 8000",
                           "{value} is not a port number (0 to 65535); give one such as 8000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsent", description="Multimodal (image + text) sentiment classification.")
    parser.add_argument("--version", action="version", version=f"mmsent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("--data", type=Path, required=True, help="data set folder")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    _add_list_args(p)
    _add_config_args(p)
    _add_overwrite(p)
    _add_common(p)

    p = sub.add_parser("evaluate", help="metrics of a run on a labelled guid list, as JSON")
    p.add_argument("--run", type=Path, required=True, action="append",
                   help="run folder; repeat it to evaluate the ensemble (mean class probabilities)")
    p.add_argument("--data", type=Path, help="data set folder (default: the one the run was trained on)")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", type=Path, help="'guid,tag' file with true tags (more columns are ignored)")
    labels.add_argument("--split", choices=["val"], help="the run's own validation split (posts it never trained on)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    _add_backend(p)
    p.add_argument("--metrics", choices=["all", "literature"], default="all",
                   help="literature: the papers' accuracy and weighted F1 first (the same metrics otherwise)")
    _add_common(p)

    p = sub.add_parser("predict", help="write 'guid,tag' predictions for a guid list, or 'id,tag,modalities' for posts")
    p.add_argument("--run", type=Path, required=True, action="append",
                   help="run folder; repeat it to predict with the ensemble (mean class probabilities)")
    p.add_argument("--data", type=Path, help="data set folder (with --guids)")
    p.add_argument("--guids", type=Path, help="'guid,tag' file; its tags are ignored")
    p.add_argument("--input", type=Path, help="instead of --data/--guids: your own posts, a .csv or .jsonl file "
                   "(id, text or text_path, image_path) or a folder of NAME.jpg with optional NAME.txt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--proba", action="store_true", help="add one probability column per class (p_negative, ...)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    p.add_argument("--shard", metavar="I/N",
                   help="predict only the I-th of N contiguous parts of the guid list (1 <= I <= N); "
                        "join the N files with `mmsent merge-predictions`")
    _add_backend(p)
    _add_common(p)

    p = sub.add_parser("merge-predictions", help="join the prediction files of a guid list's shards, in the list's order")
    p.add_argument("--guids", type=Path, required=True, help="the 'guid,tag' list the shards were predicted from")
    p.add_argument("--out", type=Path, required=True, help="prediction file to write")
    p.add_argument("shards", type=Path, nargs="+", metavar="SHARD_FILE", help="the prediction file of every shard")

    p = sub.add_parser("run", help="train, evaluate on validation, predict the test list")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_config_args(p)
    _add_overwrite(p)
    _add_common(p)

    p = sub.add_parser("data", help="data set tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="report counts, encodings, duplicates, image sizes and problems")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--out", type=Path, default=Path("data_report.json"), help="JSON report path")
    _add_format_args(c)

    p = sub.add_parser("compare", help="train several presets on one split and tabulate them")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--presets", required=True, help="comma-separated preset names")
    p.add_argument("--ablate", default=None,
                   help="comma-separated presets that also get text-only and image-only rows "
                        "(default: tfidf_resnet18 when compared)")
    _add_config_args(p, preset=False)
    _add_overwrite(p, "comparison")
    _add_common(p)

    sub.add_parser("models", help="list encoders, heads and presets")

    p = sub.add_parser("serve", help="serve a trained run over HTTP: JSON API and a web page")
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=_port_number, default=8000, help="port to listen on (default: 8000; 0: any free port)")
    p.add_argument("--max-image-mb", type=_positive_mb, default=10.0, help="largest accepted image upload, in MB")
    p.add_argument("--max-decode-mb", type=_positive_mb, default=64.0,
                   help="memory one image may take to decode, in MB (default: 64, a 12-megapixel photo fits); "
                        "larger images are refused before decoding")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="most posts of concurrent requests run through the model together (default: 16)")
    p.add_argument("--batch-wait-ms", type=_wait_ms, default=5.0,
                   help="how long a batch waits for more requests after its first one, in ms (default: 5)")
    _add_backend(p)
    p.add_argument("--quiet", action="store_true", help="log warnings only, not every request")

    p = sub.add_parser("report", help="build an HTML report (and a Markdown twin) from run and experiment folders")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="run / experiment folders, or folders holding them")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write; report.md goes beside it")
    p.add_argument("--data-report", type=Path, help="JSON written by `mmsent data check`")
    _add_common(p)
    _add_badcase_parsers(sub)
    _add_experiment_parsers(sub)
    _add_split_parser(sub)
    return parser


def _add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-list", type=Path, help="train on the posts of this 'guid,tag' list (e.g. of `mmsent split`)")
    p.add_argument("--val-list", type=Path,
                   help="with --train-list: measure the run on this list (default: a split of the training list)")
    p.add_argument("--test-list", type=Path, action="append", default=[],
                   help="with --train-list: a list never to train on (repeatable; the test list of the split folder "
                        "of --train-list and the data folder's test_without_label.txt are held out anyway)")


def _add_format_args(p: argparse.ArgumentParser) -> None:
    from mmsent.data.releases import FORMATS, MERGE_RULES

    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="course (train.txt), an official release (labelResultAll.txt), or auto: detect it")
    p.add_argument("--merge", choices=list(MERGE_RULES), default="standard",
                   help="how a release's text and image labels make one tag (default: standard, the literature's)")


def _add_split_parser(sub) -> None:
    p = sub.add_parser("split", help="write train / validation / test lists: the literature's protocol (8:1:1)")
    p.add_argument("--data", type=Path, required=True, help="data set folder or official MVSA release")
    p.add_argument("--out", type=Path, required=True, help="folder for train.txt, val.txt, test.txt and the manifest")
    _add_format_args(p)
    p.add_argument("--ratios", default="8,1,1", help="train,validation,test proportions within each class (default 8,1,1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    for part, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        p.add_argument(f"--{part}-ids", type=Path, help=f"a published split: the {name} ids, one a line (with the others)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="on posts whose files are bad")
    _add_overwrite(p, "split folder")


def _add_badcase_parsers(sub) -> None:
    p = sub.add_parser("badcases", help="mine out-of-fold mistakes on a run's training split, with error analysis")
    p.add_argument("--run", type=Path, required=True, help="trained run folder (its config and split are used)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="experiment folder to write")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, help="fold seed (default: the run's data.split_seed)")
    _add_overwrite(p, "bad-case folder")
    _add_common(p)

    p = sub.add_parser("augment", help="write augmented copies of mined cases, with new guids and a manifest")
    p.add_argument("--badcases", type=Path, required=True, help="bad_cases.csv of `mmsent badcases`")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="augmentation folder to write (data/ + manifest.csv)")
    p.add_argument("--copies", type=int, default=2, help="copies per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-synonyms", action="store_true", help="no synonym replacement")
    _add_overwrite(p, "augmentation folder")
    _add_common(p)

    p = sub.add_parser("retrain", help="retrain a run with augmented copies; before/after on the same validation split")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--augment", type=Path, required=True, action="append", help="augmentation folder (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="new run folder")
    p.add_argument("--data", type=Path, help="data set folder (default: the one `mmsent augment` recorded)")
    _add_overwrite(p)
    _add_common(p)


def _add_experiment_parsers(sub) -> None:
    """The optimisation stage: search, variants, seeds, robustness, ablate."""
    p = sub.add_parser("search", help="hyperparameter search with Optuna (grid or TPE), resumable")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="search folder (trials/, results, best.yaml, study.db)")
    _add_config_args(p)
    space = p.add_mutually_exclusive_group(required=True)
    space.add_argument("--grid", type=Path, help="YAML: config key -> list of values (every combination)")
    space.add_argument("--space", type=Path, help="YAML: config key -> {low, high, log} or {choices} (TPE)")
    p.add_argument("--trials", type=int, help="trials to run in this call (required with --space)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite in --out); share it between machines, e.g. "
                                     "postgresql://USER:PASSWORD@HOST:5432/DB (needs pip install 'mmsent[postgres]')")
    p.add_argument("--study-name", default="mmsent-search")
    p.add_argument("--objective", default="macro_f1", help="validation metric to maximise")
    p.add_argument("--no-prune", action="store_true", help="no median pruning of hopeless trials")
    p.add_argument("--verbose", action="store_true", help="progress bars of each trial")
    _add_common(p)

    p = sub.add_parser("cv", help="cross-validate configs on train.txt: the same folds for every one, paired "
                                  "differences; a killed run resumes when run again")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="experiment folder (results, folds, paired, cv.png)")
    p.add_argument("--folds", type=int, default=5, help="folds per repeat (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="repeats with other fold seeds (default 2)")
    p.add_argument("--seed", type=int, default=0, help="fold seed of the first repeat (default 0)")
    p.add_argument("--compare", help="comma-separated config YAML files, each a candidate (the first is the reference)")
    p.add_argument("--presets", help="comma-separated presets, each a candidate (before --compare's files)")
    p.add_argument("--variants", type=Path,
                   help="YAML: candidate name -> {config key: value}, each on top of --preset/--config/--set "
                        "(the format of `mmsent variants`; after --presets and --compare)")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="redo a finished cross-validation folder at --out, or an interrupted one from the start "
                        "(without it, an interrupted run resumes from its saved folds)")
    _add_common(p)

    p = sub.add_parser("variants", help="train a base config with sets of overrides, side by side")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", type=Path, required=True, help="YAML: variant name -> {config key: value}")
    _add_config_args(p)
    _add_overwrite(p, "variants folder")
    _add_common(p)

    p = sub.add_parser("seeds", help="retrain with several seeds: mean, std, 95%% confidence interval")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="42,123,2024", help="comma-separated seeds")
    p.add_argument("--vary-split", action="store_true", help="also use each seed as data.split_seed")
    _add_config_args(p)
    _add_overwrite(p, "seeds folder")
    _add_common(p)

    p = sub.add_parser("robustness", help="evaluate a run on its validation split under perturbations")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--perturbations", help="comma-separated subset of noise,blur,jpeg,downscale,typos,hashtags")
    p.add_argument("--levels", action="append", default=[], metavar="NAME=L1,L2",
                   help="levels of one perturbation, e.g. blur=1,3 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random perturbations")
    _add_overwrite(p, "robustness folder")
    _add_common(p)

    p = sub.add_parser("ablate", help="modality ablation of a multimodal run (blanked, or --retrain)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--retrain", action="store_true", help="also train text-only and image-only models")
    _add_overwrite(p, "ablation folder")
    _add_common(p)


def _config(args: argparse.Namespace):
    from mmsent.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "on_error", None):
        overrides.append(f"data.on_error={args.on_error}")
    return load_config(args.config, overrides, preset=getattr(args, "preset", None))


def _origin(args: argparse.Namespace, kind: str = "train"):
    """What the run's manifest records of how it was asked for."""
    from mmsent.run_folder import RunOrigin

    return RunOrigin(command_line(args.argv), getattr(args, "preset", None), kind)


def cmd_train(args: argparse.Namespace) -> int:
    from mmsent.api import train
    from mmsent.engine.metrics import summary_line

    if args.train_list or args.val_list or args.test_list:
        return cmd_train_on_lists(args)
    result = train(args.data, args.out, _config(args), quiet=args.quiet, overwrite=args.overwrite, origin=_origin(args))
    if result.run_dir is not None:  # the main process (the others of a launch trained with it)
        print(f"validation: {summary_line(result.metrics)}")
        print(f"run folder: {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmsent.api import evaluate
    from mmsent.heldout import overlap_warning

    metrics = evaluate(args.run, args.data, args.labels, quiet=args.quiet, on_error=args.on_error, split=args.split,
                       backend=args.backend)
    if len(args.run) > 1:
        metrics["ensemble_of"] = [str(r) for r in args.run]
    if args.metrics == "literature":
        from mmsent.engine.metrics import literature_first

        metrics = literature_first(metrics)
    print(json.dumps(metrics, indent=2))
    if warning := overlap_warning(metrics["in_training"], args.run):
        print(f"mmsent: warning: {warning}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mmsent.api import Shard, predict
    from mmsent.distributed import is_main_process

    if args.input is not None or not (args.data and args.guids):
        return cmd_predict_posts(args)
    shard = Shard.parse(args.shard) if args.shard else None
    rows = predict(args.run, args.data, args.guids, args.out, quiet=args.quiet, on_error=args.on_error, shard=shard,
                   proba=args.proba, backend=args.backend)
    ensemble = f" (ensemble of {len(args.run)} runs)" if len(args.run) > 1 else ""
    part = f" (shard {shard} of {args.guids})" if shard else ""
    if is_main_process():
        print(f"wrote {len(rows)} predictions to {args.out}{part}{ensemble}")
    return 0


def cmd_merge_predictions(args: argparse.Namespace) -> int:
    from mmsent.api import merge_predictions

    merged = merge_predictions(args.guids, args.shards, args.out)
    skipped = f"; {len(merged.skipped)} guid(s) skipped by their shards, listed beside it" if merged.skipped else ""
    print(f"merged {len(merged.rows)} predictions from {len(args.shards)} file(s) into {args.out}{skipped}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mmsent.api import run
    from mmsent.distributed import is_main_process

    t0 = time.perf_counter()
    summary = run(args.data, args.out, _config(args), quiet=args.quiet, overwrite=args.overwrite,
                  origin=_origin(args, kind="run"))
    if not is_main_process():
        return 0  # the main process of the launch reports
    m = summary.metrics
    print("")
    print(f"validation (n={m['n']}): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    print(f"time: {time.perf_counter() - t0:.1f} s (encoding {m['encode_seconds']:.1f} s, training {m['train_seconds']:.1f} s)")
    print(f"predictions: {summary.predictions} ({summary.n_predictions} guids)")
    print(f"run folder: {summary.run_dir} (config, weights, metrics, curves, validation predictions, plots/)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from mmsent.data.check import check_dataset, format_report
    from mmsent.files import atomic_write_text, check_output_file

    out = check_output_file(args.out, "the data report")  # before the data set is read
    report = check_dataset(args.data, data_format=args.format, merge=args.merge)
    atomic_write_text(out, json.dumps(report, indent=2))
    print(format_report(report))
    print(f"JSON report: {out}")
    if report["problems"]:
        # a check that passes whatever it finds cannot guard a pipeline
        print(f"mmsent: error: the data set has {len(report['problems'])} problem(s), listed above", file=sys.stderr)
        return 2
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
                     ablate=ablate, quiet=args.quiet, command=command_line(args.argv), overwrite=args.overwrite)
    print(result.markdown)
    print(f"results: {result.out_dir} (results.csv, results.md, figures)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mmsent.serve.app import serve

    serve(args.run, args.host, args.port, args.max_image_mb, args.max_decode_mb, quiet=args.quiet,
          batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms, backend=args.backend)
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

    res = mine_bad_cases(args.run, args.data, args.out, args.folds, args.seed, args.quiet, command_line(args.argv),
                         overwrite=args.overwrite)
    print(f"out of fold on the training split: {summary_line(res.metrics)}")
    print(f"mistakes: {res.n_bad} of {res.n_train} -> {res.out_dir / 'bad_cases.csv'}")
    print(f"error analysis: {res.out_dir / 'results.md'}, {res.out_dir / 'confusion.md'} and figures")
    print(f"time: {res.seconds:.1f} s")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from mmsent.experiments.augment import AugmentOptions, augment_bad_cases

    opts = AugmentOptions(synonyms=not args.no_synonyms)
    res = augment_bad_cases(args.badcases, args.data, args.out, args.copies, args.seed, opts, args.quiet,
                            command_line(args.argv), overwrite=args.overwrite)
    print(f"wrote {res.n_copies} copies of {res.n_sources} cases to {res.out_dir / 'data'} "
          f"(manifest {res.out_dir / 'manifest.csv'}) in {res.seconds:.1f} s")
    print(f"add them to training with: --set data.augment=[{res.out_dir}]  or  mmsent retrain --augment {res.out_dir}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from mmsent.experiments.retrain import format_comparison, retrain

    t0 = time.perf_counter()
    res = retrain(args.run, args.augment, args.out, args.data, args.quiet, command_line(args.argv),
                  overwrite=args.overwrite)
    print(f"validation split of {args.run} (n={res.after['n']}), before = {args.run}, after = {res.run_dir}:")
    print(format_comparison(res.rows))
    print(f"time: {time.perf_counter() - t0:.1f} s; table: {res.run_dir / 'results.md'}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mmsent.experiments.search import SearchSpace, load_grid, load_space, run_search, shown_storage

    space = SearchSpace(grid=load_grid(args.grid)) if args.grid else SearchSpace(ranges=load_space(args.space))
    # the command is recorded in the search's manifest: never with the database password
    argv = [a.replace(args.storage, shown_storage(args.storage)) for a in args.argv] if args.storage else args.argv
    result = run_search(args.data, args.out, _config(args), space, command_line(argv), trials=args.trials,
                        storage=args.storage, study_name=args.study_name, objective=args.objective,
                        prune=not args.no_prune, quiet=args.quiet or not args.verbose, show_progress=not args.quiet)
    for note in result.dead:
        print(f"dead worker: {note}")
    requeued = f", {result.requeued} failed or yielded point(s) re-queued" if result.requeued else ""
    print(f"ran {result.ran} trial(s) here{requeued}; the study {result.study_name!r} has {len(result.rows)} "
          f"finished ({result.storage})")
    if result.running_elsewhere:
        print(f"{result.running_elsewhere} trial(s) still running in other workers: rerun once they end to "
              "complete the table (a dead worker's trial is failed and redone by the next run)")
    if result.best_value is not None:
        print(f"best validation {args.objective}: {result.best_value:.4f}; config: {args.out / 'best.yaml'}")
    print(f"results: {args.out / 'results.md'}")
    return 0


def cv_candidates(args: argparse.Namespace) -> dict:
    """name -> config of each candidate: --presets, --compare's files, --variants' entries; else the arguments' config."""
    from mmsent.config import load_config

    overrides = list(args.overrides) + ([f"data.on_error={args.on_error}"] if args.on_error else [])
    candidates = {}
    for preset in _split_list(args.presets):
        candidates[preset] = load_config(args.config, overrides, preset=preset)
    for path in _split_list(args.compare):
        name = Path(path).stem
        while name in candidates:
            name += "+"
        candidates[name] = load_config(Path(path), overrides, preset=args.preset)
    if args.variants:
        from mmsent.experiments.variants import load_variants

        base = load_config(args.config, overrides, preset=args.preset)
        for name, values in load_variants(args.variants).items():
            while name in candidates:
                name += "+"
            candidates[name] = base.with_values(values)
    if not candidates:
        name = args.preset or (args.config.stem if args.config else "config")
        candidates[name] = load_config(args.config, overrides, preset=args.preset)
    return candidates


def _split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def cmd_cv(args: argparse.Namespace) -> int:
    from mmsent.experiments.cv import run_cv

    result = run_cv(args.data, args.out, cv_candidates(args), command_line(args.argv), folds=args.folds,
                    repeats=args.repeats, seed=args.seed, quiet=args.quiet, overwrite=args.overwrite)
    print(result.markdown)
    if result.reused_folds:
        print(f"resumed: {result.reused_folds} fold(s) taken from the interrupted run in {result.out_dir}")
    print(f"results: {result.out_dir} (results.csv/.md, folds.csv, paired.csv/.md, cv.png, candidates/)")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from mmsent.experiments.variants import load_variants, run_variants
    from mmsent.tables import markdown_table

    rows = run_variants(args.data, args.out, _config(args), load_variants(args.variants), command_line(args.argv), args.quiet,
                        overwrite=args.overwrite, preset=args.preset)
    print(markdown_table(rows, ["variant", "accuracy", "macro_f1", "weighted_f1", "f1_neutral", "parameters", "train_seconds"]))
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from mmsent.experiments.seeds import parse_seeds, run_seeds
    from mmsent.tables import markdown_table

    rows, note = run_seeds(args.data, args.out, _config(args), parse_seeds(args.seeds), command_line(args.argv),
                           vary_split=args.vary_split, quiet=args.quiet, overwrite=args.overwrite, preset=args.preset)
    print(markdown_table(rows, ["seed", "accuracy", "macro_f1", "weighted_f1", "f1_neutral", "macro_precision", "macro_recall"]))
    print(note)
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from mmsent.experiments.robustness import parse_levels, run_robustness
    from mmsent.tables import markdown_table

    names = [n.strip() for n in args.perturbations.split(",")] if args.perturbations else None
    rows = run_robustness(args.run, args.data, args.out, command_line(args.argv), names, parse_levels(args.levels),
                          seed=args.seed, quiet=args.quiet, overwrite=args.overwrite)
    print(markdown_table(rows, ["perturbation", "level", "accuracy", "macro_f1", "weighted_f1", "drop_macro_f1"]))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from mmsent.experiments.ablation import run_ablation
    from mmsent.tables import markdown_table

    rows = run_ablation(args.run, args.data, args.out, command_line(args.argv), retrain=args.retrain, quiet=args.quiet,
                        overwrite=args.overwrite)
    print(markdown_table(rows, ["setting", "method", "accuracy", "macro_f1", "weighted_f1", "f1_neutral"]))
    return 0


def cmd_train_on_lists(args: argparse.Namespace) -> int:
    from mmsent.api import train_on_lists
    from mmsent.engine.metrics import summary_line

    if not args.train_list:
        raise MmsentError("--val-list and --test-list go with --train-list: give the list to train on")
    result = train_on_lists(args.data, args.out, _config(args), args.train_list, args.val_list, args.test_list,
                            quiet=args.quiet, overwrite=args.overwrite, origin=_origin(args))
    print(f"validation: {summary_line(result.metrics)}")
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_predict_posts(args: argparse.Namespace) -> int:
    from mmsent.api import predict_posts

    if args.input is None or args.data or args.guids:
        raise MmsentError("predict takes --data and --guids (posts of a data set), or --input (your own posts), "
                          "not both")
    result = predict_posts(args.run, args.input, args.out, quiet=args.quiet, on_error=args.on_error)
    one = [modalities for _, _, modalities in result.rows if "+" not in modalities]
    only = f" ({len(one)} from one modality only: see the column modalities)" if one else ""
    print(f"wrote {len(result.rows)} predictions to {args.out}{only}")
    if result.ignored:
        print(f"not read (mmsent reads id, text, text_path, image_path): {', '.join(result.ignored)}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} post(s), listed in {result.skipped_file}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from mmsent.data.split_lists import PARTS, parse_ratios
    from mmsent.experiments.protocol import make_split

    ids = {part: getattr(args, f"{part}_ids") for part in PARTS}
    if any(ids.values()) and not all(ids.values()):
        raise MmsentError("a published split takes all three of --train-ids, --val-ids and --test-ids")
    result = make_split(args.data, args.out, args.format, args.merge, parse_ratios(args.ratios), args.seed,
                        ids if all(ids.values()) else None, args.on_error, command=command_line(args.argv),
                        overwrite=args.overwrite)
    if result.release:
        from mmsent.data.check import release_lines

        print("\n".join(release_lines(result.release)))
    for part in PARTS:
        counts = result.counts[part]
        print(f"{part}: {counts['total']} ({', '.join(f'{k} {v}' for k, v in counts.items() if k != 'total')})")
    print(f"duplicate groups across parts: {result.groups_across}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} post(s): listed in the manifest")
    print(f"split folder: {result.out_dir} (train.txt, val.txt, test.txt and the manifest) in {result.seconds:.1f} s")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "merge-predictions": cmd_merge_predictions,
    "run": cmd_run,
    "data": cmd_data,
    "models": cmd_models,
    "compare": cmd_compare,
    "serve": cmd_serve,
    "report": cmd_report,
    "badcases": cmd_badcases,
    "augment": cmd_augment,
    "retrain": cmd_retrain,
    "search": cmd_search,
    "cv": cmd_cv,
    "variants": cmd_variants,
    "seeds": cmd_seeds,
    "robustness": cmd_robustness,
    "ablate": cmd_ablate,
    "split": cmd_split,
}


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one clear message and return 2."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return_large_blocks()  # a process that frees large feature and training copies gives them back
    code = _dispatch(args)
    # after a command that ended (well or with a user error) in every process; a crash skips it, since
    # destroying a group while another process still waits in a collective can hang that process
    leave_process_group()
    return code


def _dispatch(args: argparse.Namespace) -> int:
    """The command's exit code; user errors print one clear message and return 2."""
    try:
        if args.command not in LAUNCHABLE_COMMANDS:
            require_single_process(args.command)
        return COMMANDS[args.command](args)
    except FollowerError as exc:
        return exc.exit_code  # the main process of the launch says why
    except MmsentError as exc:
        print(f"mmsent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # the environment refused a file operation (read-only folder, full disk, permissions): say where and why
        from mmsent.files import describe_os_error

        print(f"mmsent: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmsent: interrupted", file=sys.stderr)
        return 130


def entrypoint() -> None:
    exit_process(main())


if __name__ == "__main__":
    entrypoint()
