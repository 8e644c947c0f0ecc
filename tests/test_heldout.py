"""evaluate and predict as a researcher needs them: the run's own validation split, overlap warnings, probabilities."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mmsent import LABELS
from mmsent.cli import main
from mmsent.heldout import trained_on


def test_every_run_writes_its_validation_list(trained_run):
    data, run = trained_run
    split = json.loads((run / "split.json").read_text())
    tags = dict(line.split(",") for line in (data / "train.txt").read_text().splitlines()[1:])
    lines = (run / "val.txt").read_text().splitlines()
    assert lines[0] == "guid,tag"
    assert [tuple(line.split(",")) for line in lines[1:]] == [(g, tags[g]) for g in split["val"]]


def test_evaluate_split_val_is_the_runs_own_validation_score(trained_run, capsys):
    _, run = trained_run
    assert main(["evaluate", "--run", str(run), "--split", "val", "--quiet"]) == 0  # --data from the run's manifest
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    recorded = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == recorded["n"] and metrics["macro_f1"] == pytest.approx(recorded["macro_f1"], abs=1e-6)
    assert metrics["in_training"] == {"guids": 0, "of": recorded["n"]} and "warning" not in captured.err


@pytest.mark.parametrize("label_file", ["val.txt", "val_predictions.csv"])
def test_the_runs_own_files_are_label_files(trained_run, capsys, label_file):
    data, run = trained_run
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--labels", str(run / label_file), "--quiet"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["macro_f1"] == pytest.approx(json.loads((run / "metrics.json").read_text())["macro_f1"], abs=1e-6)
    assert "warning" not in captured.err


def test_evaluating_training_posts_says_how_many_were_trained_on(trained_run, capsys):
    data, run = trained_run
    assert main(["evaluate", "--run", str(run), "--labels", str(data / "train.txt"), "--quiet"]) == 0
    captured = capsys.readouterr()
    n_train = len(json.loads((run / "split.json").read_text())["train"])
    total = len((data / "train.txt").read_text().splitlines()) - 1
    assert json.loads(captured.out)["in_training"] == {"guids": n_train, "of": total}
    assert f"warning: {n_train} of the {total} labelled guids were in the training data" in captured.err
    assert "--split val" in captured.err


def test_copies_count_as_their_sources(trained_run, tmp_path: Path):
    _, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    split = json.loads((copy / "split.json").read_text())
    source = split["val"][0]
    split["augmented"] = [f"aug-s0-{source}-1"]  # a copy whose manifest is gone: its guid names the source
    (copy / "split.json").write_text(json.dumps(split))
    marker = json.loads((copy / "complete.json").read_text())
    data = (copy / "split.json").read_bytes()
    marker["files"]["split.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (copy / "complete.json").write_text(json.dumps(marker))
    assert trained_on([copy], [source, split["val"][1]]) == [source]


def test_evaluate_needs_labels_or_a_split(trained_run, capsys):
    _, run = trained_run
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(run)])
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(run), "--split", "test"])
    capsys.readouterr()


def test_predict_proba_adds_one_probability_column_per_class(trained_run, tmp_path: Path):
    data, run = trained_run
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "--data", str(data), "--guids", str(data / "test_without_label.txt"),
                 "--out", str(out), "--proba", "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == ["guid", "tag", *[f"p_{lab}" for lab in LABELS]]
    for line in lines[1:]:
        _, tag, *probs = line.split(",")
        values = [float(p) for p in probs]
        assert sum(values) == pytest.approx(1, abs=1e-4) and tag == LABELS[values.index(max(values))]
