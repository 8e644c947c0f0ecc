"""A user's own posts: CSV, JSONL and folder inputs, their problems, one-modality posts, and `predict --input`
giving the tags of `predict --guids`."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image

from mmsent.api import load_run
from mmsent.cli import main
from mmsent.data.posts import read_posts
from mmsent.data.records import load_dataset
from mmsent.data.text import decode_text
from mmsent.errors import MmsentError

NOT_GB18030 = b"\xff\xfe broken"  # neither UTF-8 nor GB18030


def write_csv(path: Path, header: list[str], rows: list[list[str]], crlf: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    return path


def own_posts(folder: Path) -> Path:
    """Images and text files of a user, outside any data set layout."""
    (folder / "img").mkdir(parents=True)
    draw_image("positive", 1).save(folder / "img" / "sun.png")  # PNG: any format PIL reads
    draw_image("negative", 2).save(folder / "img" / "rain.jpg")
    (folder / "gbk.txt").write_bytes("\u201chappy\u201d\u3002".encode("gb18030"))
    return folder


def test_csv_posts_with_inline_texts_text_files_and_one_modality(tmp_path: Path):
    folder = own_posts(tmp_path / "mine")
    path = write_csv(folder / "posts.csv", ["ID", "text", "text_path", "image_path", "source"], [
        ["a", "so happy\r\ntoday, \"really\"", "", "img/sun.png", "phone"],  # a quoted cell over two lines
        ["b", "", "gbk.txt", "img/rain.jpg", ""],
        ["c", "", "", "img/rain.jpg", ""],  # image only
        ["d", "just words", "", "", ""],  # text only
        ["e", "   ", "", str((folder / "img" / "sun.png").resolve()), ""],  # a blank text is no text; absolute path
    ], crlf=True)
    posts = read_posts(path)
    assert posts.problems == [] and posts.ignored == ["source"]
    assert [r.guid for r in posts.records] == ["a", "b", "c", "d", "e"]
    assert posts.records[0].text == "so happy\r\ntoday, \"really\"" and posts.records[0].image_path == folder / "img/sun.png"
    assert posts.records[1].text == "\u201chappy\u201d\u3002" and posts.records[1].text_fallback
    assert [sorted(m) for m in posts.modalities] == [["image", "text"], ["image", "text"], ["image"], ["text"], ["image"]]


def test_jsonl_and_folder_posts(tmp_path: Path):
    folder = own_posts(tmp_path / "mine")
    lines = [{"id": 1, "text": "good", "image_path": "img/sun.png", "lang": "en"}, {"id": "2", "text_path": "gbk.txt"}]
    (folder / "posts.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    posts = read_posts(folder / "posts.jsonl")
    assert [r.guid for r in posts.records] == ["1", "2"] and posts.ignored == ["lang"]
    assert [sorted(m) for m in posts.modalities] == [["image", "text"], ["text"]]
    (folder / "img" / "sun.txt").write_text("sunny again")
    (folder / "img" / "notes.md").write_text("not a post")
    posts = read_posts(folder / "img")
    assert [r.guid for r in posts.records] == ["rain", "sun"] and posts.ignored == ["notes.md"]
    assert [sorted(m) for m in posts.modalities] == [["image"], ["image", "text"]]
    assert posts.records[1].text == "sunny again"


def test_every_bad_row_is_one_line(tmp_path: Path):
    folder = own_posts(tmp_path / "mine")
    (folder / "img" / "broken.jpg").write_bytes(b"not an image")
    (folder / "bad.txt").write_bytes(NOT_GB18030)
    path = write_csv(folder / "posts.csv", ["id", "text", "text_path", "image_path"], [
        ["ok", "fine", "", "img/sun.png"],
        ["m", "x", "", "img/missing.jpg"],
        ["u", "x", "", "img/broken.jpg"],
        ["t", "", "bad.txt", ""],
        ["f", "", "nofile.txt", ""],
        ["both", "x", "gbk.txt", ""],
        ["none", "", "", ""],
        ["ok", "again", "", ""],
        ["", "no id", "", ""],
    ])
    posts = read_posts(path)
    lines = [p.line() for p in posts.problems]
    expected = ["guid m: " + str(folder / "img/missing.jpg") + ": image file is missing",
                "guid u: " + str(folder / "img/broken.jpg") + ": image cannot be decoded",
                "guid t: " + str(folder / "bad.txt") + ": text is neither UTF-8 nor GB18030",
                "guid f: " + str(folder / "nofile.txt") + ": text file is missing",
                f"guid both: {path}:7: give the text inline (text) or as a file (text_path), not both",
                f"guid none: {path}:8: the post has neither a text nor an image",
                f"guid ok: {path}:9: id is listed twice",
                f"file: {path}:10: the post has no id"]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert [r.guid for r in posts.records] == ["ok"]


@pytest.mark.parametrize("name, content, needle", [
    ("posts.csv", "guid,text\n1,x\n", "the header must name the column id"),
    ("posts.txt", "id,text\n1,x\n", "cannot tell the format from the name"),
    ("posts.csv", "id,text\n", "holds no post"),
    ("posts.jsonl", '{"id": 1, "text": ["a"]}\n[1]\n{oops\n', None),
])
def test_malformed_post_files(tmp_path: Path, name: str, content: str, needle: str | None):
    path = tmp_path / name
    path.write_text(content)
    if needle is not None:
        with pytest.raises(MmsentError, match=needle):
            read_posts(path)
        return
    reasons = [p.reason for p in read_posts(path).problems]
    assert reasons[0] == "text: must be a string" and reasons[1] == "not a JSON object but list"
    assert reasons[2].startswith("not a JSON object (")


def posts_csv_of(data: Path, guids: list[str], out: Path) -> Path:
    """The data set's posts as a user's CSV: inline texts and image paths relative to the CSV."""
    images = Path(os.path.relpath(data / "data", out.parent))
    rows = [[g, decode_text((data / "data" / f"{g}.txt").read_bytes())[0], "", str(images / f"{g}.jpg")] for g in guids]
    return write_csv(out, ["id", "text", "text_path", "image_path"], rows)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_input_gives_the_tags_of_predict_guids(trained_run, tmp_path: Path, capsys):
    data, run = trained_run
    guids = [r.guid for r in load_dataset(data).train]
    posts = posts_csv_of(data, guids, tmp_path / "posts.csv")
    listing = tmp_path / "list.txt"
    listing.write_text("guid,tag\n" + "".join(f"{g},null\n" for g in guids))
    by_guids, by_input = tmp_path / "guids.txt", tmp_path / "input.csv"
    assert main(["predict", "--run", str(run), "--data", str(data), "--guids", str(listing), "--out", str(by_guids),
                 "--quiet"]) == 0
    assert main(["predict", "--run", str(run), "--input", str(posts), "--out", str(by_input), "--quiet"]) == 0
    assert f"wrote {len(guids)} predictions to {by_input}\n" in capsys.readouterr().out
    expected = [line.split(",") for line in by_guids.read_text().splitlines()[1:]]
    assert [(r["id"], r["tag"]) for r in read_rows(by_input)] == [tuple(x) for x in expected]
    assert {r["modalities"] for r in read_rows(by_input)} == {"text+image"}


def test_one_modality_posts_are_blanked_as_ablate_does(trained_run, tmp_path: Path):
    data, run_dir = trained_run
    guids = ["101", "120", "140"]
    posts = tmp_path / "posts.jsonl"
    lines = [{"id": "101", "text": decode_text((data / "data" / "101.txt").read_bytes())[0]},  # text only
             {"id": "120", "image_path": str(data / "data" / "120.jpg")},  # image only
             {"id": "140", "text_path": str(data / "data" / "140.txt"), "image_path": str(data / "data" / "140.jpg")}]
    posts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(run_dir), "--input", str(posts), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out)
    assert [(r["id"], r["modalities"]) for r in rows] == [("101", "text"), ("120", "image"), ("140", "text+image")]
    # the same posts with both modalities, each blanked the way `mmsent ablate` does it
    run = load_run(run_dir)
    records = {r.guid: r for r in load_dataset(data).train}
    feats = run.features([records[g] for g in guids], quiet=True)
    drops = [frozenset({"image"}), frozenset({"text"}), frozenset()]
    tags = [["negative", "neutral", "positive"][int(np.argmax(run.predict_features(feats, drop=d)[i]))]
            for i, d in enumerate(drops)]
    assert [r["tag"] for r in rows] == tags


def test_bad_posts_exit_2_or_are_skipped_and_recorded(trained_run, tmp_path: Path, capsys):
    data, run = trained_run
    folder = tmp_path / "mine"
    folder.mkdir()
    draw_image("positive", 3).save(folder / "a.jpg")
    (folder / "a.txt").write_text("what a lovely day")
    (folder / "b.jpg").write_bytes(b"\x89PNG broken")
    (folder / "c.txt").write_bytes(NOT_GB18030)
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(run), "--input", str(folder), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the data set has 2 problem(s)" in err and "guid b:" in err and "guid c:" in err
    assert "--on-error skip" in err and "Traceback" not in err and not out.exists()
    assert main(["predict", "--run", str(run), "--input", str(folder), "--out", str(out), "--quiet",
                 "--on-error", "skip"]) == 0
    assert "skipped 2 post(s), listed in" in capsys.readouterr().out
    assert [r["id"] for r in read_rows(out)] == ["a"]
    skipped = json.loads(out.with_suffix(".skipped.json").read_text())
    assert [s["id"] for s in skipped] == ["b", "c"]


def test_predict_arguments_are_one_or_the_other(trained_run, tmp_path: Path, capsys):
    data, run = trained_run
    posts = posts_csv_of(data, ["101"], tmp_path / "one.csv")
    out = str(tmp_path / "p.csv")
    assert main(["predict", "--run", str(run), "--input", str(posts), "--data", str(data), "--out", out]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--data", str(data), "--out", out]) == 2
    assert "--data and --guids" in capsys.readouterr().err


def test_a_post_without_the_modality_a_run_reads_is_refused(dataset: Path, tmp_path: Path, capsys):
    run = tmp_path / "text_run"
    assert main(["train", "--data", str(dataset), "--out", str(run), "--quiet", "--set", "model.encoders=[vader]"]) == 0
    folder = tmp_path / "mine"
    folder.mkdir()
    draw_image("positive", 3).save(folder / "pic.jpg")
    (folder / "words.txt").write_text("lovely")
    assert main(["predict", "--run", str(run), "--input", str(folder), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 2
    assert "guid pic:" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--input", str(folder), "--out", str(tmp_path / "p.csv"), "--quiet",
                 "--on-error", "skip"]) == 0
    assert [(r["id"], r["modalities"]) for r in read_rows(tmp_path / "p.csv")] == [("words", "text")]
