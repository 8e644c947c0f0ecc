"""`mmsent split`: the literature's train / validation / test lists of a data folder or an official release, with a manifest."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmsent.data.labels import write_label_file
from mmsent.data.records import load_entries, raise_on_problems, require_data_dir
from mmsent.data.releases import labelled_posts, resolve_format
from mmsent.data.split_lists import (
    LIST_FILES,
    PARTS,
    SPLIT_KIND,
    groups_across_parts,
    part_counts,
    split_by_ratios,
    split_from_ids,
)
from mmsent.errors import Problem
from mmsent.run_folder import experiment_folder, write_manifest


@dataclass
class SplitResult:
    out_dir: Path
    data_format: str
    counts: dict[str, dict[str, int]]
    release: dict | None  # the merge's counts of an official release
    groups_across: int
    skipped: list[Problem]
    seconds: float


def make_split(
    data_dir: Path,
    out_dir: Path,
    data_format: str = "auto",
    merge: str = "standard",
    ratios: Sequence[float] = (8, 1, 1),
    seed: int = 0,
    id_files: dict[str, Path] | None = None,
    on_error: str = "fail",
    max_pixels: int = 89_478_485,
    command: str = "",
    overwrite: bool = False,
) -> SplitResult:
    """Write train.txt, val.txt and test.txt (`guid,tag`) and the manifest into out_dir.

    By ratios: stratified, duplicate groups on one side, seeded. With id_files {train, val, test}: the
    published split, tagged with this folder's (merged) labels.
    """
    t0 = time.perf_counter()
    root = require_data_dir(Path(data_dir))
    data_format = resolve_format(root, data_format)
    entries, problems, release = labelled_posts(root, data_format, merge)
    records, load_problems = load_entries(root, entries, max_pixels)
    problems = problems + load_problems
    if id_files:
        dropped = dict(release.merge.dropped) if release else {}
        parts, id_problems = split_from_ids(records, id_files, dropped, [p.guid for p in load_problems])
        problems = problems + id_problems
    raise_on_problems(problems, on_error)
    if not id_files:
        parts = split_by_ratios(records, ratios, seed)
    counts = part_counts(parts)
    across = groups_across_parts(parts)
    release_summary = release.summary() if release else None
    with experiment_folder(Path(out_dir), SPLIT_KIND, overwrite) as out:
        for part in PARTS:
            write_label_file(out / LIST_FILES[part], [(r.guid, r.tag) for r in parts[part]])
        source = ({"published_ids": {part: str(Path(id_files[part]).resolve()) for part in PARTS}} if id_files
                  else {"ratios": list(ratios), "seed": seed})
        write_manifest(out, SPLIT_KIND, command, data=str(root.resolve()), format=data_format, **source,
                       lists=LIST_FILES, counts=counts, release=release_summary,
                       duplicate_groups_across_parts=across,
                       skipped=[{"guid": p.guid, "path": p.path, "reason": p.reason} for p in problems])
    return SplitResult(Path(out_dir), data_format, counts, release_summary, across, problems, time.perf_counter() - t0)
