"""Which labelled posts a run never trained on: its validation split, its training guids, and overlaps with them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mmsent.data.augmented import manifest_path, read_manifest_rows
from mmsent.errors import MmsentError
from mmsent.run_folder import RunFolder

SPLITS = ("val",)
COPY_GUID_RE = re.compile(r"^aug-s\d+-(?P<source>.+)-\d+$")  # `mmsent augment`'s guids: aug-s{seed}-{guid}-{k}


def recorded_data_dir(run_dir: Path) -> Path:
    """The data folder a run was trained on, from its manifest; a clear error when it is not recorded or gone."""
    data = RunFolder.open(run_dir).data_dir
    if data is None:
        raise MmsentError(f"{run_dir} does not record its data folder (an older run): pass --data")
    if not data.is_dir():
        raise MmsentError(f"{run_dir} was trained on {data}, which is not there any more: pass --data")
    return data


def split_guids(run_dir: Path, split: str) -> list[str]:
    """The guids of one of the run's own splits (`val`: the posts it was validated on, never trained on)."""
    if split not in SPLITS:
        raise MmsentError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    guids = RunFolder.open(run_dir).split().val
    if not guids:
        raise MmsentError(f"{run_dir} has an empty validation split: nothing to evaluate")
    return guids


def copy_sources(run: RunFolder) -> set[str]:
    """The source guids of the augmented copies the run trained on (from their manifests, else from the guids)."""
    copies = set(run.split().augmented)
    if not copies:
        return set()
    sources: dict[str, str] = {}
    for entry in run.config().data.augment:
        path = manifest_path(entry)
        if path.is_file():
            sources.update({row["guid"]: row["source_guid"] for row in read_manifest_rows(path)})
    for guid in copies - set(sources):
        match = COPY_GUID_RE.match(guid)  # the manifest moved: the guid still names its source
        if match:
            sources[guid] = match.group("source")
    return {sources[g] for g in copies if g in sources}


def training_guids(run_dir: Path) -> set[str]:
    """Every guid the run learnt from: its training split and the sources of its augmented copies."""
    run = RunFolder.open(run_dir)
    return set(run.split().train) | copy_sources(run)


def trained_on(run_dirs: Sequence[Path], guids: Sequence[str]) -> list[str]:
    """The guids (in their order) that any of the runs trained on."""
    seen: set[str] = set()
    for run_dir in run_dirs:
        seen |= training_guids(run_dir)
    return [g for g in guids if g in seen]


def overlap_warning(overlap: dict, run_dirs: Sequence[Path]) -> str | None:
    """One line for a user whose labelled posts were trained on, or None when they are all held out."""
    if not overlap["guids"]:
        return None
    runs = ", ".join(str(r) for r in run_dirs)
    return (f"{overlap['guids']:,} of the {overlap['of']:,} labelled guids were in the training data of {runs}: "
            "these scores are not held-out scores (use --split val for the run's own validation posts)")
