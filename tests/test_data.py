"""The data layer: label lists, records, image modes, every kind of bad input, splits and the data report."""

from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image, make_dataset, write_list, write_post
from PIL import Image

from mmsent.data.check import check_dataset
from mmsent.data.images import ImageReadError, open_image
from mmsent.data.labels import read_label_file, write_label_file
from mmsent.data.records import load_dataset
from mmsent.data.splits import stratified_folds, stratified_split
from mmsent.errors import DataError


def test_valid_dataset_loads(dataset: Path):
    ds = load_dataset(dataset)
    assert len(ds.train) == 36 and len(ds.test) == 6
    assert all(r.tag in ("positive", "neutral", "negative") for r in ds.train)
    assert all(r.tag is None for r in ds.test)
    assert sum(r.text_fallback for r in ds.train) == 9  # every 4th file per class is GB18030
    assert all("\ufffd" not in r.text for r in ds.train)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "1"])
def test_image_modes_become_rgb(tmp_path: Path, mode: str):
    path = tmp_path / "x.jpg"
    img = draw_image("positive", 1).convert(mode)
    img.save(path, format="PNG" if mode in ("P", "RGBA", "1") else "JPEG")  # PNG inside .jpg works too
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (64, 48)


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        open_image(path, max_pixels=1_000_000)


def test_truncated_image_is_an_error(tmp_path: Path):
    path = tmp_path / "t.jpg"
    draw_image("negative", 3, size=(200, 200)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError):
        open_image(path)


def test_all_problems_are_reported_together(dataset: Path):
    data = dataset / "data"
    (data / "101.txt").unlink()  # missing text
    (data / "102.jpg").unlink()  # missing image
    (data / "103.jpg").write_bytes(b"not an image at all")  # unreadable image
    rows = (dataset / "train.txt").read_text().splitlines()
    rows += ["104,positive", "999,happy"]  # duplicate guid, unknown tag
    (dataset / "train.txt").write_text("\n".join(rows) + "\n")
    test_rows = (dataset / "test_without_label.txt").read_text().splitlines() + ["105,null"]
    (dataset / "test_without_label.txt").write_text("\n".join(test_rows) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset(dataset)
    message = str(info.value)
    for needle in ["guid 101", "text file is missing", "guid 102", "image file is missing", "guid 103",
                   "cannot be decoded", "guid 104", "listed twice", "guid 999", "unknown tag 'happy'",
                   "guid 105", "listed in both", "--on-error skip"]:
        assert needle in message, needle
    assert len(info.value.problems) == 6


def test_skip_mode_keeps_the_good_guids(dataset: Path):
    (dataset / "data" / "101.txt").unlink()
    ds = load_dataset(dataset, on_error="skip")
    assert "101" not in {r.guid for r in ds.train} and len(ds.train) == 35
    assert [p.guid for p in ds.skipped] == ["101"]
    assert "text file is missing" in ds.skipped_rows()[0]["reason"]


@pytest.mark.parametrize(
    "content, reason",
    [("", "empty"), ("101,positive\n", "header"), ("guid;tag\n101;positive\n", "header")],
)
def test_bad_label_files(tmp_path: Path, content: str, reason: str):
    path = tmp_path / "train.txt"
    path.write_text(content)
    entries, problems = read_label_file(path, labelled=True)
    assert not entries and len(problems) == 1 and reason in problems[0].reason


def test_empty_train_list_fails_even_in_skip_mode(dataset: Path):
    (dataset / "train.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(dataset, on_error="skip")


def test_test_tags_are_ignored(tmp_path: Path):
    path = tmp_path / "t.txt"
    path.write_text("guid,tag\n1,null\n2,positive\n")
    entries, problems = read_label_file(path, labelled=False)
    assert [(e.guid, e.tag) for e in entries] == [("1", None), ("2", None)] and not problems


def test_write_label_file_is_atomic_and_ordered(tmp_path: Path):
    out = tmp_path / "p.txt"
    write_label_file(out, [("3", "positive"), ("1", "neutral")])
    assert out.read_text() == "guid,tag\n3,positive\n1,neutral\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.txt"]


def test_stratified_split_is_deterministic_and_stratified():
    tags = ["positive"] * 60 + ["negative"] * 30 + ["neutral"] * 10
    a_train, a_val = stratified_split(tags, 0.1, seed=7)
    b_train, b_val = stratified_split(tags, 0.1, seed=7)
    assert np.array_equal(a_val, b_val) and len(a_val) == 10
    assert set(a_train).isdisjoint(a_val) and len(a_train) + len(a_val) == 100
    val_tags = [tags[i] for i in a_val]
    assert val_tags.count("positive") == 6 and val_tags.count("negative") == 3 and val_tags.count("neutral") == 1
    _, c_val = stratified_split(tags, 0.1, seed=8)
    assert not np.array_equal(a_val, c_val)


def test_folds_hold_out_each_index_once():
    tags = ["a", "b"] * 10
    held = np.concatenate([held for _, held in stratified_folds(tags, 5, seed=0)])
    assert sorted(held.tolist()) == list(range(20))


def test_data_check_report(tmp_path: Path):
    root = make_dataset(tmp_path / "ds")
    data = root / "data"
    # an exact duplicate text and image across train and test, with a conflicting label inside train
    img = draw_image("positive", 5)
    write_post(data, "500", "same words", img)
    write_post(data, "501", "same words", img)
    write_post(data, "502", "same words", img)
    rows = (root / "train.txt").read_text().splitlines()[1:] + ["500,positive", "501,negative"]
    write_list(root / "train.txt", [tuple(r.split(",")) for r in rows])
    (root / "test_without_label.txt").write_text((root / "test_without_label.txt").read_text() + "502,null\n")
    report = check_dataset(root)
    assert report["counts"]["train"] == {"negative": 13, "neutral": 12, "positive": 13, "total": 38}
    assert report["counts"]["test"]["total"] == 7
    assert report["gb18030_fallback"]["count"] == 9
    assert report["redundant_files"] == {"guids": 1, "files": 2, "examples": ["99999"]}
    group = next(g for g in report["duplicate_texts"]["details"] if "500" in g["guids"])
    assert group["guids"] == ["500", "501", "502"] and group["crosses_train_test"] and group["conflicting_labels"]
    assert report["duplicate_images"]["crossing_train_test"] >= 1
    assert report["image_size"]["width"]["median"] == 64
    assert report["problems"] == []
