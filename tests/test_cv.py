"""`mmsent cv`: the same folds for every candidate, duplicate groups kept whole, paired differences, no test list."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image, make_dataset, write_list, write_post

from mmsent.cli import main
from mmsent.data.duplicates import duplicate_groups, normalised_text
from mmsent.data.records import load_dataset
from mmsent.data.splits import stratified_folds, stratified_split
from mmsent.stats import cv_interval, t_interval
from mmsent.tables import read_table

FAST = ["--set", "model.encoders=[vader,efficientnet_lite0]", "--set", "train.epochs=4", "--quiet"]


def with_duplicates(root: Path) -> Path:
    """A data set where two posts repeat 101's text (with another link) and one repeats 115's image."""
    data = make_dataset(root, per_class=10)
    rows = [tuple(line.split(",")) for line in (data / "train.txt").read_text().splitlines()[1:]]
    tag = dict(rows)
    for guid in ("901", "902"):
        text = (data / "data" / "101.txt").read_bytes().replace(b"http://t.co/x", b"http://t.co/other")
        write_post(data / "data", guid, text.decode("gb18030"), draw_image(tag["101"], int(guid)))
        rows.append((guid, tag["101"]))
    write_post(data / "data", "903", "a different text entirely", draw_image("neutral", 5))
    shutil.copy(data / "data" / "115.jpg", data / "data" / "903.jpg")
    rows.append(("903", tag["115"]))
    write_list(data / "train.txt", rows)
    return data


def test_duplicate_groups_join_same_text_and_same_image(tmp_path: Path):
    data = with_duplicates(tmp_path / "ds")
    records = load_dataset(data).train
    groups = dict(zip([r.guid for r in records], duplicate_groups(records).tolist(), strict=True))
    assert groups["901"] == groups["902"] == groups["101"]  # the same text, links aside
    assert groups["903"] == groups["115"]  # the same image
    assert groups["101"] != groups["103"]  # "awful news" and "so angry": other texts, other images
    assert normalised_text("RT @bob: Great day!! http://t.co/x") == "great day"


def test_splits_and_folds_keep_groups_whole_and_are_seeded():
    tags = ["a"] * 40 + ["b"] * 20 + ["c"] * 10
    groups = np.arange(70) // 2  # pairs
    train, val = stratified_split(tags, 0.2, seed=3, groups=groups)
    assert set(groups[train]).isdisjoint(groups[val])
    assert sorted(val.tolist()) == sorted(stratified_split(tags, 0.2, seed=3, groups=groups)[1].tolist())
    counts = {t: sum(tags[i] == t for i in val) for t in "abc"}
    assert counts == {"a": 8, "b": 4, "c": 2}
    held = [h for _, h in stratified_folds(tags, 5, seed=0, groups=groups)]
    assert sorted(np.concatenate(held).tolist()) == list(range(70))
    for h in held:
        assert set(groups[h]).isdisjoint(set(groups[np.setdiff1d(np.arange(70), h)]))


def test_intervals():
    plain = t_interval([0.60, 0.62, 0.61, 0.63, 0.59])
    assert plain.mean == pytest.approx(0.61) and plain.low < 0.61 < plain.high
    corrected = cv_interval([0.60, 0.62, 0.61, 0.63, 0.59], test_train_ratio=0.25)
    assert corrected.half_width > plain.half_width  # folds share training data: wider


def test_cv_compares_candidates_on_the_same_folds(tmp_path: Path):
    data = with_duplicates(tmp_path / "ds")
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  hidden_dim: 64\n")
    other = tmp_path / "wide.yaml"
    other.write_text("model:\n  hidden_dim: 128\n")
    out = tmp_path / "cv"
    args = ["cv", "--data", str(data), "--out", str(out), "--folds", "3", "--repeats", "2",
            "--compare", f"{base},{other}", *FAST]
    assert main(args) == 0
    summary = read_table(out / "results.csv")
    assert [r["candidate"] for r in summary] == ["base", "wide"]
    for row in summary:
        for score in ("accuracy", "macro_f1", "weighted_f1", "f1_neutral"):
            low, high = json.loads(row[f"{score}_ci"])
            assert low <= float(row[score]) <= high
    folds = read_table(out / "folds.csv")
    assert len(folds) == 12 and {(r["repeat"], r["fold"]) for r in folds if r["candidate"] == "wide"} == {
        (r["repeat"], r["fold"]) for r in folds if r["candidate"] == "base"}
    paired = read_table(out / "paired.csv")
    assert {r["score"] for r in paired} >= {"accuracy", "macro_f1", "weighted_f1", "f1_neutral"}
    assert all(r["verdict"] in ("better", "worse", "within noise") for r in paired)
    assert (out / "cv.png").is_file()
    manifest = json.loads((out / "experiment.json").read_text())
    held = manifest["fold_guids"]
    assert len(held) == 6
    test_guids = {line.split(",")[0] for line in (data / "test_without_label.txt").read_text().splitlines()[1:]}
    for r in range(2):
        fold_of = {g: name for name, guids in held.items() if name.startswith(f"r{r}") for g in guids}
        assert len(fold_of) == 33 and not test_guids & set(fold_of)  # every labelled post once, no test post
        assert fold_of["101"] == fold_of["901"] == fold_of["902"] and fold_of["115"] == fold_of["903"]
    oof = read_table(out / "candidates" / "base" / "oof_predictions.csv")
    assert len(oof) == 2 * 33 and all(abs(sum(float(r[f"p_{c}"]) for c in ("negative", "neutral", "positive")) - 1) < 1e-3
                                      for r in oof)
    assert main(args) == 2  # a finished experiment is kept unless --overwrite


def test_cv_refuses_too_many_folds(tmp_path: Path, capsys):
    data = make_dataset(tmp_path / "ds", per_class=3)
    assert main(["cv", "--data", str(data), "--out", str(tmp_path / "cv"), "--folds", "5", *FAST]) == 2
    assert "at least 5 labelled posts per class" in capsys.readouterr().err


def test_cv_variants_are_candidates_on_top_of_the_base(tmp_path: Path, capsys):
    data = make_dataset(tmp_path / "ds", per_class=10)
    variants = tmp_path / "v.yaml"
    variants.write_text("base: {}\nargmax: {train.decision: argmax}\n")
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(data), "--out", str(out), "--folds", "2", "--repeats", "1",
                 "--variants", str(variants), "--set", "train.ensemble=2", *FAST]) == 0
    assert [r["candidate"] for r in read_table(out / "results.csv")] == ["base", "argmax"]
    argmax = (out / "candidates" / "argmax" / "candidate.yaml").read_text()
    assert "decision: argmax" in argmax and "ensemble: 2" in argmax
    assert "| argmax | base | macro_f1 |" in capsys.readouterr().out


def test_an_interrupted_cv_resumes_from_its_saved_folds(tmp_path: Path, monkeypatch, capsys):
    """A kill after three folds: the same command again computes only the rest, with the scores of a run never
    killed; another config recomputes, and --overwrite starts from nothing."""
    import mmsent.experiments.cv as cv

    data = make_dataset(tmp_path / "ds", per_class=10)
    variants = tmp_path / "v.yaml"
    variants.write_text("base: {}\nargmax: {train.decision: argmax}\n")
    args = ["--data", str(data), "--folds", "2", "--repeats", "1", "--variants", str(variants),
            "--set", "train.ensemble=2", *FAST]
    assert main(["cv", "--out", str(tmp_path / "whole"), *args]) == 0
    whole = read_table(tmp_path / "whole" / "folds.csv")

    real = cv.held_out_proba
    calls: list[str] = []

    def killed_at_fourth(cfg, records, fold, test_guids):
        calls.append(fold.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(cfg, records, fold, test_guids)

    monkeypatch.setattr(cv, "held_out_proba", killed_at_fourth)
    out = tmp_path / "cv"
    assert main(["cv", "--out", str(out), *args]) == 130
    assert not (out / "experiment.json").exists()
    assert sorted(p.name for p in (out / "candidates").glob("*/folds/*.npz")) == ["r0f0.npz", "r0f0.npz", "r0f1.npz"]

    calls.clear()
    monkeypatch.setattr(cv, "held_out_proba", lambda *a: calls.append(a[2].name) or real(*a))
    capsys.readouterr()
    assert main(["cv", "--out", str(out), *args]) == 0
    assert calls == ["r0f1"]  # argmax's second fold only
    assert "resumed: 3 fold(s) taken from the interrupted run" in capsys.readouterr().out
    resumed = read_table(out / "folds.csv")
    score_columns = [c for c in whole[0] if c != "seconds"]
    assert [{c: r[c] for c in score_columns} for r in resumed] == [{c: r[c] for c in score_columns} for r in whole]
    assert json.loads((out / "experiment.json").read_text())["reused_folds"] == 3

    # a saved fold made with another config is not taken: the finished folder is redone from nothing
    calls.clear()
    assert main(["cv", "--out", str(out), *args, "--set", "train.seed=7", "--overwrite"]) == 0
    assert len(calls) == 4

    (out / "experiment.json").unlink()  # unfinished again, and its folds saved under train.seed=7
    calls.clear()
    assert main(["cv", "--out", str(out), *args]) == 0
    assert len(calls) == 4  # other config, other keys: nothing reused
    (out / "candidates" / "base" / "folds" / "r0f0.npz").write_bytes(b"not a zip")
    (out / "experiment.json").unlink()
    calls.clear()
    assert main(["cv", "--out", str(out), *args]) == 0
    assert calls == ["r0f0"]  # an unreadable fold is computed again
