"""The official MVSA releases: readers and the merge rule with known answers, data check, and malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import draw_image, write_post

from mmsent.cli import main
from mmsent.data.releases import (
    CONFLICT,
    DIFFER,
    TIE_BOTH,
    TIE_IMAGE,
    TIE_TEXT,
    detect_format,
    majority,
    read_release,
)
from mmsent.errors import MmsentError

# MVSA-Single: one (text, image) pair per post, and what each rule makes of it (None: dropped, with the reason)
SINGLE = {
    "1": ("positive,positive", "positive"),
    "2": ("positive,neutral", "positive"),
    "3": ("neutral,negative", "negative"),
    "4": ("neutral,neutral", "neutral"),
    "5": ("positive,negative", None),
    "6": ("negative,positive", None),
    "7": ("negative,negative", "negative"),
    "8": ("negative,neutral", "negative"),
    "9": ("neutral,positive", "positive"),
}
# MVSA-Multiple: three annotators; each modality's majority first (a tie drops the post), then the pair rule
MULTIPLE = {
    "11": (("positive,positive", "positive,neutral", "neutral,positive"), "positive"),
    "12": (("positive,neutral", "negative,neutral", "neutral,neutral"), TIE_TEXT),
    "13": (("negative,positive", "negative,negative", "negative,neutral"), TIE_IMAGE),
    "14": (("positive,positive", "neutral,negative", "negative,neutral"), TIE_BOTH),
    "15": (("positive,negative", "positive,negative", "neutral,neutral"), CONFLICT),
    "16": (("neutral,negative", "neutral,negative", "positive,positive"), "negative"),
    "17": (("neutral,neutral", "neutral,neutral", "negative,neutral"), "neutral"),
    "18": (("negative,negative", "negative,negative", "negative,negative"), "negative"),
}


def write_release(root: Path, rows: dict[str, tuple[str, ...]], header: str, crlf: bool = False,
                  gbk: frozenset[str] = frozenset(), tags: dict[str, str] | None = None) -> Path:
    """A release folder: labelResultAll.txt (tab-separated, trailing blanks) and data/{id}.txt|jpg per post."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    lines = [header] + [f"{guid}\t" + "\t".join(pairs) + "  " for guid, pairs in rows.items()]
    (root / "labelResultAll.txt").write_bytes((end.join(lines) + end).encode("utf-8"))
    for guid in rows:
        tag = (tags or {}).get(guid, "neutral")
        # GBK texts: the data layer's UTF-8, then GB18030 (a superset of GBK) decoding, as for the course layout
        write_post(root / "data", guid, f"post {guid} about {tag}", draw_image(tag, int(guid)), gb18030=guid in gbk)
    return root


def single_release(root: Path, crlf: bool = True) -> Path:
    return write_release(root, {g: (pair,) for g, (pair, _) in SINGLE.items()}, "ID\ttext,image", crlf,
                         gbk=frozenset({"2", "7"}))


def multiple_release(root: Path) -> Path:
    header = "ID\ttext,image\ttext,image\ttext,image"
    return write_release(root, {g: pairs for g, (pairs, _) in MULTIPLE.items()}, header, crlf=True)


@pytest.mark.parametrize(
    "rule, kept",
    [
        ("standard", {g: tag for g, (_, tag) in SINGLE.items() if tag}),
        ("agree", {"1": "positive", "4": "neutral", "7": "negative"}),
        ("text", {g: pair.split(",")[0] for g, (pair, _) in SINGLE.items()}),
        ("image", {g: pair.split(",")[1] for g, (pair, _) in SINGLE.items()}),
    ],
)
def test_mvsa_single_known_answers(tmp_path: Path, rule: str, kept: dict[str, str]):
    release = read_release(single_release(tmp_path / "single"), "mvsa-single", rule)
    assert release.problems == [] and release.annotators == 1
    assert {e.guid: e.tag for e in release.merge.kept} == kept
    summary = release.summary()
    assert summary["posts"] == 9 and summary["kept"] == len(kept) and summary["dropped"] == 9 - len(kept)
    expected_reason = {"standard": CONFLICT, "agree": DIFFER}.get(rule)
    assert summary["dropped_by_reason"] == ({expected_reason: 9 - len(kept)} if expected_reason else {})


def test_mvsa_multiple_known_answers(tmp_path: Path):
    release = read_release(multiple_release(tmp_path / "multi"), "mvsa-multiple")
    assert release.problems == [] and release.annotators == 3
    assert {e.guid: e.tag for e in release.merge.kept} == {"11": "positive", "16": "negative", "17": "neutral",
                                                          "18": "negative"}
    assert dict(release.merge.dropped) == {"12": TIE_TEXT, "13": TIE_IMAGE, "14": TIE_BOTH, "15": CONFLICT}
    summary = release.summary()
    assert (summary["posts"], summary["kept"], summary["dropped"]) == (8, 4, 4)
    assert summary["kept_by_tag"] == {"negative": 2, "neutral": 1, "positive": 1}
    assert summary["dropped_by_reason"] == {CONFLICT: 1, TIE_BOTH: 1, TIE_IMAGE: 1, TIE_TEXT: 1}


def test_a_one_modality_rule_ignores_ties_of_the_other(tmp_path: Path):
    release = read_release(multiple_release(tmp_path / "multi"), "mvsa-multiple", "text")
    # 13 ties on the image only and 15 conflicts: the text rule keeps both; 12 and 14 tie on the text
    assert {e.guid: e.tag for e in release.merge.kept} == {"11": "positive", "13": "negative", "15": "positive",
                                                          "16": "neutral", "17": "neutral", "18": "negative"}
    assert dict(release.merge.dropped) == {"12": TIE_TEXT, "14": TIE_TEXT}


def test_majority_drops_ties():
    assert majority(["positive", "positive", "neutral"]) == "positive"
    assert majority(["positive", "neutral", "negative"]) is None
    assert majority(["neutral"]) == "neutral"
    assert majority(["positive", "negative"]) is None


def test_formats_are_detected(tmp_path: Path, dataset: Path):
    assert detect_format(single_release(tmp_path / "s")) == "mvsa-single"
    assert detect_format(multiple_release(tmp_path / "m")) == "mvsa-multiple"
    assert detect_format(dataset) == "course"
    (dataset / "labelResultAll.txt").write_text("ID\ttext,image\n1\tpositive,positive\n")
    with pytest.raises(MmsentError, match="both labelResultAll.txt and train.txt; pass --format"):
        detect_format(dataset)


def test_malformed_lines_are_named_with_their_line_numbers(tmp_path: Path):
    root = multiple_release(tmp_path / "multi")
    label_file = root / "labelResultAll.txt"
    lines = label_file.read_text().splitlines()
    lines[2] = "12\tpositive,neutral"  # one pair instead of three
    lines[3] = "13\tpositive,happy\tneutral,neutral\tneutral,neutral"  # unknown label
    lines.append("11\tpositive,positive\tpositive,positive\tpositive,positive")  # the ID again
    label_file.write_text("\n".join(lines) + "\n")
    release = read_release(root, "mvsa-multiple")
    by_line = {p.path.rsplit(":", 1)[1]: p for p in release.problems}
    assert set(by_line) == {"3", "4", "10"}
    assert "expected 'ID<TAB>text,image' with 3 'text,image' pairs, found 1 pair(s)" in by_line["3"].reason
    assert "'positive,happy' is not a 'text,image' pair" in by_line["4"].reason
    assert by_line["10"].reason == "ID is listed twice" and by_line["10"].guid == "11"
    assert len(release.merge.kept) + len(release.merge.dropped) == 6  # the good lines are still read


def test_a_format_that_does_not_match_the_header_is_one_message(tmp_path: Path, capsys):
    root = multiple_release(tmp_path / "multi")
    assert main(["data", "check", "--data", str(root), "--format", "mvsa-single", "--out", str(tmp_path / "r.json")]) == 2
    out = capsys.readouterr().out
    assert "the header names 3 'text,image' pair(s) per post, not 1: this looks like mvsa-multiple" in out


def test_data_check_counts_what_the_merge_kept_and_dropped(tmp_path: Path, capsys):
    root = single_release(tmp_path / "single")
    report_path = tmp_path / "report.json"
    assert main(["data", "check", "--data", str(root), "--out", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "release: mvsa-single" in out and "kept 7 (negative 3, neutral 1, positive 3), dropped 2" in out
    assert f"dropped: 2 {CONFLICT}" in out
    report = json.loads(report_path.read_text())
    assert report["format"] == "mvsa-single" and report["release"]["kept"] == 7
    assert report["counts"]["train"] == {"negative": 3, "neutral": 1, "positive": 3, "total": 7}
    assert report["gb18030_fallback"]["count"] == 2  # the GBK texts of 2 and 7, both kept
    assert report["redundant_files"]["guids"] == 0  # the dropped posts are listed, not redundant


def test_data_check_of_a_multiple_release_names_the_ties(tmp_path: Path, capsys):
    root = multiple_release(tmp_path / "multi")
    (root / "data" / "16.jpg").unlink()
    assert main(["data", "check", "--data", str(root), "--out", str(tmp_path / "r.json")]) == 2
    out = capsys.readouterr().out
    for line in [f"dropped: 1 {TIE_TEXT}", f"dropped: 1 {TIE_IMAGE}", f"dropped: 1 {TIE_BOTH}", f"dropped: 1 {CONFLICT}",
                 "per modality: each modality's label is the most frequent among the annotators; a tie drops the post",
                 "16.jpg: image file is missing"]:
        assert line in out, line


def test_training_on_a_release_without_lists_says_how(tmp_path: Path, capsys):
    root = single_release(tmp_path / "single")
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is an official MVSA release" in err and "mmsent split --data" in err and "Traceback" not in err
