"""Benchmark of `mmsent run` on the real data, old and new code side by side: encoding time, wall time, peak memory,
validation metrics, agreement of the predicted tags, and `mmsent predict` on 1,000 posts with an empty cache.

Usage: python benchmarks/bench_run.py --data ../shared/mvsa [--baseline /path/to/checkout/src] [--predict 1000]
       [--also NAME=key=value,key=value ...] [--set key=value ...]

Each variant runs `mmsent run` in a child process with a fresh, empty cache (every encoder runs, ONNX exports
included); `baseline` (the code at --baseline, e.g. a worktree of 7b007e0) and `auto` (this code as it ships)
then run again on that warm cache and `mmsent predict` the first --predict posts of train.txt with another
empty cache (their tags are not read). `torch` (this code, runtime.backend=torch) and any --also run cold
only. The machine is shared, so compare ratios within one run. Results: a Markdown table on stdout
and benchmarks/results/run.json.

       python benchmarks/bench_run.py --data ../shared/mvsa --run RUN [--baseline SRC --baseline-run RUN0]
       [--predict 300] [--rounds 2]

measures prediction only (no training; for a machine too busy for three cold runs): see trained_run_mode;
its results go to benchmarks/results/predict.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmsent.run_folder import RunFolder

SRC = Path(__file__).resolve().parents[1] / "src"


def child(args: list[str], src: Path, cache: Path) -> tuple[float, int]:
    """`python -m mmsent.cli ARGS` with src first on the path and cache as MMSENT_CACHE: (wall seconds, peak RSS MB)."""
    env = dict(os.environ, MMSENT_CACHE=str(cache), PYTHONPATH=str(src))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mmsent.cli", *args], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mmsent {' '.join(args)} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return wall, round(usage.ru_maxrss / 1024)


def run_once(data: Path, out: Path, src: Path, cache: Path, overrides: list[str]) -> dict:
    """One `mmsent run`; its metrics and timings."""
    args = ["run", "--data", str(data), "--out", str(out), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    wall, peak = child(args, src, cache)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": peak,
        "val_accuracy": round(metrics["accuracy"], 4),
        "val_macro_f1": round(metrics["macro_f1"], 4),
        "encode_seconds": metrics["encode_seconds"],
        # items the encoders went through in encode_seconds: since 2026-11-28 `run` encodes the test list there too
        "encoded_items": max(sum(s.values()) for s in metrics["encoder_cache"].values()),
        "train_seconds": metrics["train_seconds"],
        "n_val": metrics["n"],
    }


def predict_once(data: Path, run: Path, guids: Path, src: Path, cache: Path, out: Path,
                 extra: list[str] | None = None) -> dict:
    """`mmsent predict` for the guids of a list file with an empty cache: posts per second, end to end."""
    wall, peak = child(["predict", "--run", str(run), "--data", str(data), "--guids", str(guids), "--out", str(out),
                        "--quiet", *(extra or [])], src, cache)
    n = len(out.read_text().splitlines()) - 1
    return {"posts": n, "wall_seconds": round(wall, 1), "posts_per_second": round(n / wall, 1), "peak_rss_mb": peak}


def first_guids(data: Path, n: int, target: Path) -> Path:
    """A list file of the first n guids of train.txt, tags replaced by null (predict ignores them anyway)."""
    lines = (data / "train.txt").read_text().splitlines()[1 : n + 1]
    target.write_text("guid,tag\n" + "".join(f"{line.split(',')[0]},null\n" for line in lines))
    return target


def val_tags(run: Path) -> dict[str, str]:
    with RunFolder.open(run).val_predictions.open() as f:
        return {row["guid"]: row["pred"] for row in csv.DictReader(f)}


def predicted_tags(path: Path) -> dict[str, str]:
    with path.open() as f:
        return {row["guid"]: row["tag"] for row in csv.DictReader(f)}


def tag_share(a: dict[str, str], b: dict[str, str]) -> dict:
    same = sum(a[g] == b.get(g) for g in a)
    return {"same_tag": same, "n": len(a), "share": round(same / len(a), 4)}


def trained_run_mode(args: argparse.Namespace, work: Path) -> dict:
    """--run: no training. In --rounds rounds, each code predicts the same first --predict posts of train.txt
    with an empty cache (every encoder runs: that is the encoding stage of a cold run, plus loading the
    model), baseline (the code at --baseline, for --baseline-run), torch and auto (this code with
    --backend torch / auto, for --run); then auto predicts the run's validation posts with an empty cache,
    and its tags are compared with val_predictions.csv, which the run's training computed with torch."""
    guids = first_guids(args.data, args.predict, work / "guids.txt")
    chosen = [("baseline", args.baseline, args.baseline_run, [])] if args.baseline else []
    chosen += [("torch", SRC, args.run, ["--backend", "torch"]), ("auto", SRC, args.run, ["--backend", "auto"])]
    results: dict = {name: {"src": str(src), "run": str(run), "predict": []} for name, src, run, _ in chosen}
    for rnd in range(args.rounds):
        for name, src, run, extra in chosen:
            print(f"[{name}] predict {args.predict} posts, round {rnd + 1} ...", file=sys.stderr, flush=True)
            out = work / f"{name}-{rnd}.txt"
            results[name]["predict"].append(predict_once(args.data, run, guids, src, work / f"{name}-{rnd}-cache", out,
                                                         extra))
            print(f"[{name}] {json.dumps(results[name]['predict'][-1])}", file=sys.stderr, flush=True)
    tags = {name: predicted_tags(work / f"{name}-0.txt") for name in results}
    agreement = {f"{a} vs {b}": tag_share(tags[a], tags[b]) for a in tags for b in tags if a < b}
    val = work / "val.txt"
    val.write_text("guid,tag\n" + "".join(f"{g},null\n" for g in RunFolder.open(args.run).split().val))
    print("[auto] predict the validation posts ...", file=sys.stderr, flush=True)
    results["auto"]["validation"] = predict_once(args.data, args.run, val, SRC, work / "val-cache", work / "val-pred.txt",
                                                 ["--backend", "auto"])
    agreement["run's validation tags (torch, at training) vs auto"] = tag_share(val_tags(args.run),
                                                                                 predicted_tags(work / "val-pred.txt"))
    return {"variants": results, "agreement": agreement}


def print_trained_run_table(results: dict) -> None:
    base = results["variants"].get("baseline", {}).get("predict")
    print("| code | posts | seconds per round (empty cache) | posts/s (median) | speed-up vs baseline | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for name, r in results["variants"].items():
        seconds = sorted(p["wall_seconds"] for p in r["predict"])
        median = seconds[len(seconds) // 2]
        speedup = f"{sorted(p['wall_seconds'] for p in base)[len(base) // 2] / median:.1f}x" if base else ""
        print(f"| {name} | {r['predict'][0]['posts']} | {' / '.join(map(str, seconds))} | "
              f"{round(r['predict'][0]['posts'] / median, 1)} | {speedup} | {max(p['peak_rss_mb'] for p in r['predict'])} |")
    for pair, a in results["agreement"].items():
        print(f"tags {pair}: {a['same_tag']}/{a['n']} alike ({100 * a['share']:.1f}%)")


def agreement(a: Path, b: Path) -> dict:
    """How many validation posts two runs tag alike, and their metric differences."""
    tags_a, tags_b = val_tags(a), val_tags(b)
    same = sum(tags_a[g] == tags_b.get(g) for g in tags_a)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (a, b)]
    return {"same_tag": same, "n": len(tags_a), "share": round(same / len(tags_a), 4),
            "accuracy_diff": round(metrics[1]["accuracy"] - metrics[0]["accuracy"], 4),
            "macro_f1_diff": round(metrics[1]["macro_f1"] - metrics[0]["macro_f1"], 4)}


def bench_variants(chosen: list[tuple[str, Path, list[str], bool]], args: argparse.Namespace, work: Path,
                   guids: Path | None) -> dict:
    """Every variant's cold runs, then their warm runs, then their predictions: a change in the machine's load
    during the benchmark falls on all variants alike rather than on one."""
    results: dict = {name: {"src": str(src), "overrides": overrides} for name, src, overrides, _ in chosen}
    for name, src, overrides, _ in chosen:
        print(f"[{name}] cold run ...", file=sys.stderr, flush=True)
        results[name]["cold"] = run_once(args.data, work / name, src, work / f"{name}-cache", overrides)
    for name, src, overrides, warm in chosen:
        if warm:
            print(f"[{name}] warm run ...", file=sys.stderr, flush=True)
            results[name]["warm"] = run_once(args.data, work / f"{name}-warm", src, work / f"{name}-cache", overrides)
    for name, src, _, warm in chosen:
        if guids is not None and warm:
            print(f"[{name}] predict ...", file=sys.stderr, flush=True)
            results[name]["predict"] = predict_once(args.data, work / name, guids, src, work / f"{name}-predict-cache",
                                                    work / f"{name}-predict.txt")
    for name in results:
        print(f"[{name}] {json.dumps(results[name])}", file=sys.stderr, flush=True)
    return results


def variants(args: argparse.Namespace) -> list[tuple[str, Path, list[str], bool]]:
    """(name, source tree, overrides, with a warm run and a prediction) of every variant, in the order they run."""
    chosen = []
    if args.baseline:
        chosen.append(("baseline", args.baseline, list(args.overrides), True))
    chosen.append(("torch", SRC, [*args.overrides, "runtime.backend=torch"], False))
    chosen.append(("auto", SRC, list(args.overrides), True))
    for spec in args.also:
        name, _, sets = spec.partition("=")
        chosen.append((name, SRC, [*args.overrides, *[s for s in sets.split(",") if s]], False))
    return chosen


def print_table(results: dict) -> None:
    base = results["variants"].get("baseline", {}).get("cold", {}).get("encode_seconds")
    print("| variant | cold wall (s) | cold encode (s) | items encoded | encode speed-up | warm wall (s) "
          "| peak RSS cold (MB) | val accuracy | val macro-F1 | predict posts/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["variants"].items():
        cold, warm, pred = r["cold"], r.get("warm", {}), r.get("predict", {})
        speedup = f"{base / cold['encode_seconds']:.1f}x" if base else ""
        print(f"| {name} | {cold['wall_seconds']} | {cold['encode_seconds']} | {cold.get('encoded_items', '')} "
              f"| {speedup} | {warm.get('wall_seconds', '')} "
              f"| {cold['peak_rss_mb']} | {cold['val_accuracy']} | {cold['val_macro_f1']} | {pred.get('posts_per_second', '')} |")
    for pair, a in results["agreement"].items():
        print(f"validation tags {pair}: {a['same_tag']}/{a['n']} alike ({100 * a['share']:.1f}%), accuracy "
              f"{a['accuracy_diff']:+.4f}, macro-F1 {a['macro_f1_diff']:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--baseline", type=Path, help="src folder of the code to compare with (e.g. a 7b007e0 worktree)")
    parser.add_argument("--predict", type=int, default=1000, help="posts for `mmsent predict` (0: skip)")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=key=value,...",
                        help="another cold run of this code with these overrides (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every variant")
    parser.add_argument("--run", type=Path, help="a run of this code: no training, only predictions (see above)")
    parser.add_argument("--baseline-run", type=Path, help="with --run: a run of the --baseline code")
    parser.add_argument("--rounds", type=int, default=1, help="with --run: rounds of predictions")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/run.json, with --run predict.json")
    args = parser.parse_args()
    args.out = args.out or Path("benchmarks/results/predict.json" if args.run else "benchmarks/results/run.json")
    if args.run and args.baseline and not args.baseline_run:
        parser.error("--run with --baseline needs --baseline-run: a run that the --baseline code trained")
    work = Path(tempfile.mkdtemp(prefix="mmsent-bench-"))
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python benchmarks/bench_run.py " + " ".join(sys.argv[1:]),
        "load_average_before": round(os.getloadavg()[0], 1),
        "variants": {},
        "agreement": {},
    }
    try:
        if args.run:
            results |= trained_run_mode(args, work)
        else:
            guids = first_guids(args.data, args.predict, work / "guids.txt") if args.predict else None
            results["variants"] = bench_variants(variants(args), args, work, guids)
            for other in [n for n in results["variants"] if n != "torch"]:
                results["agreement"][f"torch vs {other}"] = agreement(work / "torch", work / other)
        results["load_average_after"] = round(os.getloadavg()[0], 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    (print_trained_run_table if args.run else print_table)(results)


if __name__ == "__main__":
    main()
