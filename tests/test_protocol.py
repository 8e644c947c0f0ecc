"""The literature's protocol: ratio splits that keep duplicate groups whole, `mmsent split`, published id files,
training on explicit lists behind the leak guard, and the literature's metrics."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, draw_image, write_post

from mmsent.cli import main
from mmsent.data.labels import read_label_file
from mmsent.data.splits import ratio_split
from mmsent.errors import MmsentError

CHEAP = ["--set", "model.encoders=[vader,lexicon]"]  # the default ensemble of logistic regressions, on text features


def big_release(root: Path, per_class: int = 20, conflicts: int = 4) -> Path:
    """An MVSA-Single release: per_class posts of each tag, a few positive-vs-negative conflicts, duplicates.

    Posts 2 and 3 share their image, posts 4 and 5 their text (after normalisation): each pair is one group.
    """
    rng = random.Random(0)
    (root / "data").mkdir(parents=True)
    lines, guid = ["ID\ttext,image"], 0
    for tag in ("positive", "neutral", "negative"):
        for i in range(per_class):
            guid += 1
            text = f"{rng.choice(WORDS[tag])} number {guid}" if guid != 5 else "love happy number 4!"
            image_seed = 2 if guid == 3 else guid
            write_post(root / "data", str(guid), text, draw_image(tag, image_seed), gb18030=i % 7 == 0)
            lines.append(f"{guid}\t{tag},{tag if i % 3 else 'neutral'}")
    for _ in range(conflicts):
        guid += 1
        write_post(root / "data", str(guid), f"mixed {guid}", draw_image("neutral", guid))
        lines.append(f"{guid}\tpositive,negative")
    (root / "labelResultAll.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root


def list_guids(path: Path) -> list[str]:
    entries, problems = read_label_file(path, labelled=True)
    assert problems == []
    return [e.guid for e in entries]


def test_ratio_split_has_each_class_in_proportion():
    tags = ["positive"] * 200 + ["neutral"] * 50 + ["negative"] * 100
    train, val, test = ratio_split(tags, (8, 1, 1), seed=3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(350))
    for part, share in ((train, 0.8), (val, 0.1), (test, 0.1)):
        counts = Counter(tags[i] for i in part)
        assert counts == {t: round(share * n) for t, n in Counter(tags).items()}


def test_ratio_split_is_seeded():
    tags = ["positive", "neutral", "negative"] * 40
    first = ratio_split(tags, (8, 1, 1), seed=5)
    assert all((a == b).all() for a, b in zip(first, ratio_split(tags, (8, 1, 1), seed=5), strict=True))
    assert any((a != b).any() for a, b in zip(first, ratio_split(tags, (8, 1, 1), seed=6), strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_ratio_split_never_lets_a_group_straddle(seed: int):
    rng = np.random.default_rng(seed)
    tags = rng.choice(["positive", "neutral", "negative"], size=300, p=[0.6, 0.1, 0.3]).tolist()
    groups = rng.integers(0, 220, size=300)  # many groups of two or three posts
    parts = ratio_split(tags, (7, 2, 1), seed, groups)
    sides = [set(groups[p].tolist()) for p in parts]
    assert sides[0].isdisjoint(sides[1]) and sides[0].isdisjoint(sides[2]) and sides[1].isdisjoint(sides[2])
    assert sum(len(p) for p in parts) == 300


@pytest.mark.parametrize("ratios", [(8, 1), (8, 0, 2), (8, -1, 1)])
def test_ratios_must_be_three_positive_numbers(ratios):
    with pytest.raises(MmsentError, match="three positive numbers"):
        ratio_split(["positive", "negative"] * 20, ratios, 0)


def test_too_few_posts_for_the_ratios_is_a_message():
    with pytest.raises(MmsentError, match="cannot split 6 labelled posts .* by the ratios 8:1:1"):
        ratio_split(["positive", "neutral", "negative"] * 2, (8, 1, 1), 0)


def test_split_command_writes_the_lists_and_the_manifest(tmp_path: Path, capsys):
    root = big_release(tmp_path / "rel")
    out = tmp_path / "split"
    assert main(["split", "--data", str(root), "--out", str(out), "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "kept 60 (negative 20, neutral 20, positive 20), dropped 4" in printed
    parts = {p: list_guids(out / f"{p}.txt") for p in ("train", "val", "test")}
    assert [len(parts[p]) for p in ("train", "val", "test")] == [48, 6, 6]
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["train"]) & set(parts["test"])
    for a, b in (("2", "3"), ("4", "5")):  # the duplicate groups are whole
        assert [a in parts[p] for p in parts] == [b in parts[p] for p in parts]
    manifest = json.loads((out / "experiment.json").read_text())
    assert manifest["kind"] == "split" and manifest["format"] == "mvsa-single"
    assert manifest["ratios"] == [8, 1, 1] and manifest["seed"] == 7
    assert manifest["release"]["dropped_by_reason"] == {"text and image labels conflict (positive vs negative)": 4}
    assert manifest["counts"]["test"] == {"negative": 2, "neutral": 2, "positive": 2, "total": 6}
    assert manifest["duplicate_groups_across_parts"] == 0
    # the same seed gives the same lists; a finished split folder is kept unless --overwrite
    before = (out / "test.txt").read_bytes()
    assert main(["split", "--data", str(root), "--out", str(out), "--seed", "7"]) == 2
    assert main(["split", "--data", str(root), "--out", str(out), "--seed", "7", "--overwrite"]) == 0
    assert (out / "test.txt").read_bytes() == before


def test_split_of_the_course_layout_uses_train_txt(dataset: Path, tmp_path: Path):
    assert main(["split", "--data", str(dataset), "--out", str(tmp_path / "s"), "--ratios", "2,1,1"]) == 0
    manifest = json.loads((tmp_path / "s" / "experiment.json").read_text())
    counts = manifest["counts"]
    assert manifest["format"] == "course" and manifest["release"] is None
    # 12 posts a class, about 6 / 3 / 3 of each: the synthetic texts repeat, and their groups stay whole
    assert sum(counts[p]["total"] for p in ("train", "val", "test")) == 36
    assert all(2 <= counts[p][t] <= 7 for p in ("train", "val", "test") for t in ("positive", "neutral", "negative"))
    assert manifest["duplicate_groups_across_parts"] == 0


def test_a_post_with_a_missing_image_stops_the_split_or_is_skipped(tmp_path: Path, capsys):
    root = big_release(tmp_path / "rel")
    (root / "data" / "7.jpg").unlink()
    assert main(["split", "--data", str(root), "--out", str(tmp_path / "s")]) == 2
    assert "guid 7:" in capsys.readouterr().err and not (tmp_path / "s" / "train.txt").exists()
    assert main(["split", "--data", str(root), "--out", str(tmp_path / "s"), "--on-error", "skip"]) == 0
    manifest = json.loads((tmp_path / "s" / "experiment.json").read_text())
    assert [s["guid"] for s in manifest["skipped"]] == ["7"] and manifest["counts"]["train"]["total"] == 47


def test_a_published_split_from_id_files(tmp_path: Path, capsys):
    root = big_release(tmp_path / "rel")
    ids = {"train": [str(g) for g in range(1, 49)], "val": [str(g) for g in range(49, 55)],
           "test": [str(g) for g in range(55, 61)]}
    files = {}
    for part, guids in ids.items():
        files[part] = tmp_path / f"{part}_ids.txt"
        files[part].write_text("\r\n".join(guids) + "\r\n")  # one id a line, CRLF
    args = ["split", "--data", str(root), "--out", str(tmp_path / "s")]
    args += [a for part in ids for a in (f"--{part}-ids", str(files[part]))]
    assert main(args) == 0
    assert {p: list_guids(tmp_path / "s" / f"{p}.txt") for p in ids} == ids
    manifest = json.loads((tmp_path / "s" / "experiment.json").read_text())
    assert set(manifest["published_ids"]) == {"train", "val", "test"}
    assert manifest["duplicate_groups_across_parts"] == 0  # 2/3 and 4/5 are both in train
    # an id the merge dropped, and an id in two files: one line each
    files["test"].write_text("guid\n61\n1\n")
    assert main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "guid 61:" in err and "the merge rule dropped this post (text and image labels conflict" in err
    assert "guid 1:" in err and "id is in the train and the test file" in err


def test_training_on_the_lists_of_a_split(tmp_path: Path, capsys):
    root = big_release(tmp_path / "rel")
    split, run = tmp_path / "split", tmp_path / "run"
    assert main(["split", "--data", str(root), "--out", str(split)]) == 0
    assert main(["train", "--data", str(root), "--out", str(run), "--train-list", str(split / "train.txt"),
                 "--val-list", str(split / "val.txt"), "--quiet", *CHEAP]) == 0
    run_split = json.loads((run / "split.json").read_text())
    assert run_split["train"] == list_guids(split / "train.txt") and run_split["val"] == list_guids(split / "val.txt")
    manifest = json.loads((run / "experiment.json").read_text())
    assert manifest["held_out_lists"] == [str((split / "test.txt").resolve())]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(root), "--labels", str(split / "test.txt"),
                 "--metrics", "literature", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics)[:4] == ["accuracy", "weighted_f1", "n", "macro_f1"] and metrics["n"] == 6


def test_the_test_list_of_a_split_is_never_trained_on(tmp_path: Path, capsys):
    root = big_release(tmp_path / "rel")
    split = tmp_path / "split"
    assert main(["split", "--data", str(root), "--out", str(split)]) == 0
    test_guid = list_guids(split / "test.txt")[0]
    # a training list in the split folder that also holds a test post: held out by the folder's manifest
    leaky = split / "train_plus.txt"
    leaky.write_text((split / "train.txt").read_text() + f"{test_guid},{read_tag(split / 'test.txt', test_guid)}\n")
    args = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--train-list", str(leaky),
            "--val-list", str(split / "val.txt"), "--quiet", *CHEAP]
    assert main(args) == 2
    assert f"guid {test_guid} is in the training data and in the test list" in capsys.readouterr().err
    # elsewhere, the test list given with --test-list
    elsewhere = tmp_path / "train_plus.txt"
    elsewhere.write_text(leaky.read_text())
    args[args.index(str(leaky))] = str(elsewhere)
    assert main(args + ["--test-list", str(split / "test.txt")]) == 2
    assert "in the test list" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def read_tag(path: Path, guid: str) -> str:
    return {e.guid: e.tag for e in read_label_file(path, labelled=True)[0]}[guid]


def test_validation_list_only_measures_the_default_model(tmp_path: Path):
    """The default ensemble early-stops on folds of the training list: another validation list, the same model."""
    root = big_release(tmp_path / "rel")
    split = tmp_path / "split"
    assert main(["split", "--data", str(root), "--out", str(split)]) == 0
    other_val = tmp_path / "val_other.txt"
    other_val.write_text((split / "test.txt").read_text())
    runs = []
    for name, val in (("a", split / "val.txt"), ("b", other_val)):
        runs.append(tmp_path / name)
        assert main(["train", "--data", str(root), "--out", str(runs[-1]), "--train-list", str(split / "train.txt"),
                     "--val-list", str(val), "--quiet", *CHEAP]) == 0
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_list_arguments_are_checked(tmp_path: Path, capsys):
    root = big_release(tmp_path / "rel", per_class=6, conflicts=0)
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--val-list", "v.txt", "--quiet"]) == 2
    assert "--val-list and --test-list go with --train-list" in capsys.readouterr().err
    (tmp_path / "train.txt").write_text("guid,tag\n1,positive\n")
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--train-list", str(tmp_path / "train.txt"),
                 "--test-list", str(tmp_path / "missing.txt"), "--quiet", *CHEAP]) == 2
    assert "missing.txt: label file is missing" in capsys.readouterr().err
