"""Does `predict --input` on a CSV of a data set's posts give the tags `predict --guids` gives on the same posts?

Usage: python benchmarks/posts_vs_guids.py --run RUN --data ../shared/mvsa [--n 1000] [--seed 0]
Draws n guids of the data set's train.txt (its tags are never read), writes them as a `guid,tag` list and as
a posts CSV (the text inline, decoded as the data layer decodes it, and the image path relative to the CSV),
then predicts both ways in child processes: --guids and --input with the feature cache in MMSENT_CACHE (warm),
and --input again with a fresh, empty cache, so every encoder runs on the CSV's texts and images (cold).
Writes benchmarks/results/posts_vs_guids.json: per variant the posts whose tags agree with --guids and the
wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmsent.api import read_guids
from mmsent.data.records import TRAIN_LIST, read_text_file
from mmsent.tables import read_table


def write_inputs(data: Path, guids: list[str], work: Path) -> tuple[Path, Path]:
    """The guid list and the posts CSV of the same posts."""
    guid_list = work / "guids.txt"
    guid_list.write_text("guid,tag\n" + "".join(f"{g},null\n" for g in guids), encoding="utf-8")
    posts = work / "posts" / "posts.csv"
    posts.parent.mkdir()
    with posts.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "image_path"])
        for guid in guids:
            text, _, problems = read_text_file(guid, data / "data" / f"{guid}.txt")
            if problems:
                raise SystemExit(f"{guid}: {problems[0].reason}")
            writer.writerow([guid, text, os.path.relpath(data.resolve() / "data" / f"{guid}.jpg", posts.parent)])
    return guid_list, posts


def predict(args: list[str], cache: Path) -> float:
    """One `mmsent predict` in a child process; its wall seconds."""
    cmd = [sys.executable, "-m", "mmsent.cli", "predict", "--quiet", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=dict(os.environ, MMSENT_CACHE=str(cache)), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return round(time.perf_counter() - t0, 1)


def tags(path: Path, key: str) -> dict[str, str]:
    return {row[key]: row["tag"] for row in read_table(path)}


def compare(reference: dict[str, str], found: dict[str, str]) -> dict:
    differ = sorted(g for g in reference if found.get(g) != reference[g])
    return {"posts": len(reference), "same_tag": len(reference) - len(differ),
            "different": [{"guid": g, "guids": reference[g], "input": found.get(g)} for g in differ]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--n", type=int, default=1000, help="posts to draw from train.txt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/posts_vs_guids.json"))
    args = parser.parse_args()
    warm_cache = Path(os.environ.get("MMSENT_CACHE", Path.home() / ".cache" / "mmsent"))
    guids = random.Random(args.seed).sample(read_guids(args.data / TRAIN_LIST), args.n)
    with tempfile.TemporaryDirectory(prefix="mmsent-posts-") as tmp:
        work = Path(tmp)
        guid_list, posts = write_inputs(args.data, guids, work)
        run = ["--run", str(args.run)]
        seconds = {
            "guids_warm": predict([*run, "--data", str(args.data), "--guids", str(guid_list),
                                   "--out", str(work / "g.csv")], warm_cache),
            "input_warm": predict([*run, "--input", str(posts), "--out", str(work / "iw.csv")], warm_cache),
            "input_cold": predict([*run, "--input", str(posts), "--out", str(work / "ic.csv")], work / "cache"),
        }
        reference = tags(work / "g.csv", "guid")
        results = {
            "command": "python benchmarks/posts_vs_guids.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
            "run": str(args.run), "n": args.n, "seed": args.seed, "wall_seconds": seconds,
            "input_warm": compare(reference, tags(work / "iw.csv", "id")),
            "input_cold": compare(reference, tags(work / "ic.csv", "id")),
            "tag_counts_guids": {t: list(reference.values()).count(t) for t in sorted(set(reference.values()))},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for variant in ("input_warm", "input_cold"):
        r = results[variant]
        print(f"{variant}: {r['same_tag']}/{r['posts']} posts get the tag of predict --guids "
              f"({seconds[variant]} s; --guids {seconds['guids_warm']} s)")


if __name__ == "__main__":
    main()
