"""The data report of `mmsent data check`: counts, encodings, redundant files, duplicates, image sizes."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mmsent import LABELS
from mmsent.data.duplicates import group_ids, normalised_text
from mmsent.data.images import ImageReadError, verify_image
from mmsent.data.labels import read_label_file
from mmsent.data.records import TEST_LIST, TRAIN_LIST, require_data_dir
from mmsent.data.releases import labelled_posts, resolve_format
from mmsent.data.splits import stratified_split
from mmsent.data.text import decode_text
from mmsent.errors import MmsentError


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 (duplicate detection, not security)


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": float(arr.min()),
        "p25": float(np.percentile(arr, 25)),
        "median": float(np.median(arr)),
        "p75": float(np.percentile(arr, 75)),
        "max": float(arr.max()),
        "mean": round(float(arr.mean()), 2),
    }


def _duplicate_groups(digests: dict[str, str], split_of: dict[str, str], tag_of: dict[str, str | None]) -> dict:
    groups: dict[str, list[str]] = defaultdict(list)
    for guid, digest in digests.items():
        groups[digest].append(guid)
    out = []
    for guids in groups.values():
        if len(guids) < 2:
            continue
        splits = sorted({split_of[g] for g in guids})
        tags = sorted({t for g in guids if (t := tag_of.get(g))})
        out.append({"guids": sorted(guids), "splits": splits, "crosses_train_test": len(splits) > 1,
                    "tags": tags, "conflicting_labels": len(tags) > 1})
    out.sort(key=lambda g: (-len(g["guids"]), g["guids"][0]))
    return {
        "groups": len(out),
        "guids_in_groups": sum(len(g["guids"]) for g in out),
        "crossing_train_test": sum(g["crosses_train_test"] for g in out),
        "with_conflicting_labels": sum(g["conflicting_labels"] for g in out),
        "details": out,
    }


def _validation_split_report(
    train: list, text_norm: dict[str, str], image_md5: dict[str, str], val_fraction: float, split_seed: int
) -> dict:
    """Duplicate groups (same normalised text or image) of train.txt and whether the training split keeps them whole."""
    entries = [e for e in train if e.guid in image_md5 and e.guid in text_norm]
    keys = [[f"image:{image_md5[e.guid]}"] + ([f"text:{text_norm[e.guid]}"] if text_norm[e.guid] else []) for e in entries]
    groups = group_ids(keys)
    sizes = Counter(groups.tolist())
    report = {"val_fraction": val_fraction, "split_seed": split_seed, "duplicate_groups": sum(n > 1 for n in sizes.values()),
              "posts_in_duplicate_groups": sum(n for n in sizes.values() if n > 1)}
    try:
        train_idx, val_idx = stratified_split([e.tag for e in entries], val_fraction, split_seed, groups)
    except MmsentError as exc:
        return {**report, "error": str(exc)}
    crossing = set(groups[train_idx].tolist()) & set(groups[val_idx].tolist())
    return {**report, "n_train": len(train_idx), "n_val": len(val_idx), "groups_crossing_train_validation": len(crossing)}


def check_dataset(
    root: Path, max_pixels: int = 89_478_485, val_fraction: float = 0.1, split_seed: int = 42,
    data_format: str = "auto", merge: str = "standard",
) -> dict:
    """Inspect a data folder without failing: every problem is listed in the report.

    val_fraction and split_seed give the validation split that training would make (data.*), whose
    duplicate groups are checked to stay on one side. An official release (data_format) is read through
    the merge rule: its merged labels take the place of train.txt, and the report counts what it kept and dropped.
    """
    root = require_data_dir(Path(root))
    data_format = resolve_format(root, data_format)
    train, train_problems, release = labelled_posts(root, data_format, merge)
    test, test_problems = read_label_file(root / TEST_LIST, labelled=False) if release is None else ([], [])
    problems = [p.line() for p in train_problems + test_problems]
    split_of = {e.guid: "test" for e in test}
    split_of.update({e.guid: "train" for e in train})
    tag_of = {e.guid: e.tag for e in train}
    for guid in sorted({e.guid for e in train} & {e.guid for e in test}):
        problems.append(f"guid {guid}: listed in both {TRAIN_LIST} and {TEST_LIST}")

    fallback, text_md5, image_md5, text_norm = [], {}, {}, {}
    widths, heights, sizes_kb = [], [], []
    for guid in split_of:
        text_path, image_path = root / "data" / f"{guid}.txt", root / "data" / f"{guid}.jpg"
        try:
            raw = text_path.read_bytes()
            text, used_fallback = decode_text(raw)
            if used_fallback:
                fallback.append(guid)
            text_md5[guid] = _md5(text.strip().encode("utf-8"))
            text_norm[guid] = normalised_text(text)
        except FileNotFoundError:
            problems.append(f"guid {guid}: {text_path}: text file is missing")
        except UnicodeDecodeError:
            problems.append(f"guid {guid}: {text_path}: text is neither UTF-8 nor GB18030")
        try:
            width, height = verify_image(image_path, max_pixels)
            data = image_path.read_bytes()
            image_md5[guid] = _md5(data)
            widths.append(width)
            heights.append(height)
            sizes_kb.append(len(data) / 1024)
        except ImageReadError as exc:
            problems.append(f"guid {guid}: {image_path}: {exc}")

    # a post the merge dropped is still listed in the release: its files are not redundant
    listed = set(split_of) | ({guid for guid, _ in release.merge.dropped} if release else set())
    on_disk = {p.stem for p in (root / "data").iterdir() if p.suffix in (".txt", ".jpg")}
    redundant = sorted(on_disk - listed, key=lambda g: (len(g), g))
    counts = Counter(e.tag for e in train)
    return {
        "data_dir": str(root),
        "format": data_format,
        **({"release": release.summary()} if release else {}),
        "counts": {
            "train": {lab: counts.get(lab, 0) for lab in LABELS} | {"total": len(train)},
            "test": {"total": len(test)},
        },
        "gb18030_fallback": {"count": len(fallback), "guids": sorted(fallback, key=lambda g: (len(g), g))},
        "redundant_files": {
            "guids": len(redundant),
            "files": sum(1 for p in (root / "data").iterdir() if p.stem in set(redundant)),
            "examples": redundant[:20],
        },
        "duplicate_texts": _duplicate_groups(text_md5, split_of, tag_of),
        "duplicate_images": _duplicate_groups(image_md5, split_of, tag_of),
        "validation_split": _validation_split_report(train, text_norm, image_md5, val_fraction, split_seed),
        "image_size": {"width": _stats(widths), "height": _stats(heights), "file_kb": _stats(sizes_kb)},
        "problems": problems,
    }


def format_report(report: dict) -> str:
    """A short human-readable summary of check_dataset's report."""
    c = report["counts"]
    lines = [f"data set: {report['data_dir']}"]
    train_counts = ", ".join(f"{lab} {c['train'][lab]}" for lab in LABELS)
    if "release" in report:
        lines += release_lines(report["release"])
        lines.append(f"labelled posts (merged): {c['train']['total']} ({train_counts})")
    else:
        lines.append(f"train.txt: {c['train']['total']} guids ({train_counts}); test list: {c['test']['total']} guids")
    lines.append(f"text files decoded with the GB18030 fallback: {report['gb18030_fallback']['count']}")
    r = report["redundant_files"]
    lines.append(f"redundant files (guids in neither list, ignored): {r['files']} files of {r['guids']} guids")
    for kind in ("duplicate_texts", "duplicate_images"):
        d = report[kind]
        lines.append(
            f"{kind.replace('_', ' ')}: {d['groups']} groups over {d['guids_in_groups']} guids; "
            f"{d['crossing_train_test']} cross train/test, {d['with_conflicting_labels']} carry conflicting labels"
        )
    v = report.get("validation_split", {})
    if "n_val" in v:
        lines.append(
            f"validation split (data.val_fraction {v['val_fraction']}, seed {v['split_seed']}): {v['n_train']} train / "
            f"{v['n_val']} validation; {v['duplicate_groups']} duplicate groups ({v['posts_in_duplicate_groups']} posts, "
            f"same normalised text or image), {v['groups_crossing_train_validation']} of them cross the split"
        )
    size = report["image_size"]
    if size["width"]:
        lines.append(
            "image size: width median {:.0f} (min {:.0f}, max {:.0f}), height median {:.0f} (min {:.0f}, max {:.0f}), "
            "file median {:.0f} KB".format(
                size["width"]["median"], size["width"]["min"], size["width"]["max"],
                size["height"]["median"], size["height"]["min"], size["height"]["max"], size["file_kb"]["median"],
            )
        )
    lines.append(f"problems: {len(report['problems'])}")
    lines += ["  " + p for p in report["problems"][:50]]
    if len(report["problems"]) > 50:
        lines.append(f"  ... and {len(report['problems']) - 50} more (see the JSON report)")
    return "\n".join(lines)


def release_lines(release: dict) -> list[str]:
    """What the merge of an official release kept and dropped, and why."""
    lines = [
        f"release: {release['format']} ({release['label_file']}, {release['annotators_per_post']} annotator(s) per post): "
        f"{release['posts']} posts; merge rule {release['rule']!r}: {release['rule_text']}",
        f"  kept {release['kept']} ({', '.join(f'{t} {n}' for t, n in release['kept_by_tag'].items())}), "
        f"dropped {release['dropped']}",
    ]
    if release["annotators_per_post"] > 1:
        lines.insert(1, f"  per modality: {release['annotators']}")
    lines += [f"  dropped: {n} {reason}" for reason, n in release["dropped_by_reason"].items()]
    return lines
