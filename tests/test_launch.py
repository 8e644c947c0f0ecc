"""Fine-tuning under `accelerate launch` with two CPU processes (gloo): shared batches, gathered validation, one writer."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bert_options
from launching import child_env, launch, tiny_finetune_args
from safetensors.torch import load_file

from mmsent import LABELS
from mmsent.api import load_run
from mmsent.cli import main
from mmsent.data.records import load_records
from mmsent.encoders import create_encoder
from mmsent.run_folder import RunFolder

EPOCHS, BATCH = 3, 8  # 26 training posts: 4 batches an epoch, 2 for each of two processes


def finetune_args(dataset: Path, out: Path, tokenizer: str) -> list[str]:
    return tiny_finetune_args(dataset, out, tokenizer, EPOCHS, BATCH)


def cached_items(cache: Path) -> list[tuple[str, str]]:
    """(encoder folder, key) of every vector in every feature-cache shard file, duplicates included."""
    items: list[tuple[str, str]] = []
    for shard in sorted(cache.glob("features/*/shard-*.npz")):
        with np.load(shard) as data:
            items += [(shard.parent.name, str(k)) for k in data["keys"]]
    return items


def val_probabilities(run: Path) -> dict[str, np.ndarray]:
    with (run / "val_predictions.csv").open(newline="") as f:
        return {row["guid"]: np.array([float(row[f"p_{label}"]) for label in LABELS]) for row in csv.DictReader(f)}


def test_two_processes_fine_tune_one_run(dataset: Path, tmp_path: Path, bert_tokenizer: str, capsys):
    cache, run = tmp_path / "launch-cache", tmp_path / "runs" / "two"
    done = launch(finetune_args(dataset, run, bert_tokenizer), child_env(cache))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("run folder:") == 1  # the main process reports, the other stays silent

    # written once, by one process: a complete run, no private folder or second lock beside it
    folder = RunFolder.open(run)
    assert sorted(p.name for p in run.parent.iterdir()) == [".two.lock", "two"]
    metrics = folder.metrics()
    assert metrics["processes"] == 2 and len(metrics["work_per_process"]) == 2

    # each process took half of the training batches, and so half of the optimiser steps
    per_epoch = math.ceil(metrics["n_train"] / BATCH)
    work = metrics["work_per_process"]
    assert [w["train_batches"] for w in work] == [EPOCHS * math.ceil(per_epoch / 2)] * 2
    # the encoding of the cold cache was shared: each process encoded part, each item was written once
    items = cached_items(cache)
    assert all(w["encoded"] > 0 for w in work) and sum(w["encoded"] for w in work) == len(items) == len(set(items))

    # the same training in one process takes every batch: twice the steps of each of the two
    single = tmp_path / "runs" / "one"
    assert main(finetune_args(dataset, single, bert_tokenizer)) == 0
    (alone,) = RunFolder.open(single).metrics()["work_per_process"]
    assert alone["train_batches"] == EPOCHS * per_epoch
    assert all(w["optimizer_steps"] <= alone["optimizer_steps"] / 2 + 1 for w in work)

    # the saved model, alone in this process, predicts the validation posts as the two processes did together:
    # the gathered predictions are in order, and the processes' weights stayed the same, backbone included
    assert metrics["best_epoch"] > 1, "the check below needs a saved backbone that trained (after the frozen epoch)"
    initial = create_encoder("bert", **bert_options(bert_tokenizer)).state_dict()
    tuned = load_file(str(run / "encoders.safetensors"))
    assert any(not torch.equal(v, tuned[f"bert.{k}"]) for k, v in initial.items())
    val = folder.split().val
    labels = tmp_path / "val.txt"
    tags = {r.guid: r.tag for r in load_records(dataset, dataset / "train.txt", labelled=True)[0]}
    labels.write_text("guid,tag\n" + "".join(f"{g},{tags[g]}\n" for g in val))
    records = load_records(dataset, labels, labelled=True)[0]
    probs = load_run(run).predict_proba(records, quiet=True)
    reported = val_probabilities(run)
    assert list(reported) == val
    np.testing.assert_allclose(probs, np.stack([reported[g] for g in val]), atol=2e-6)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(dataset), "--labels", str(labels), "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n"] == metrics["n"] == len(val)
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"]) and evaluated["macro_f1"] == pytest.approx(metrics["macro_f1"])


def test_a_refusal_of_the_main_process_stops_every_process_with_one_message(dataset: Path, tmp_path: Path):
    """An existing run without --overwrite: the main process says why, the other stops too, nothing changes."""
    run = tmp_path / "taken"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    done = launch(["train", "--data", str(dataset), "--out", str(run), "--quiet", "--set", "model.encoders=[vader]"],
                  child_env(tmp_path / "cache"))
    assert done.returncode != 0
    assert done.stderr.count("mmsent: error:") == 1 and "is a folder that is not a run" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["ds", "taken"]


def test_commands_that_run_as_one_process_refuse_a_launch(dataset: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    grid = tmp_path / "grid.yaml"
    grid.write_text("train.lr: [1.0e-3]\n")
    assert main(["search", "--data", str(dataset), "--out", str(tmp_path / "s"), "--grid", str(grid)]) == 2
    assert "mmsent search runs as one process" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert main(["search", "--data", str(dataset), "--out", str(tmp_path / "s"), "--grid", str(grid)]) == 2
    assert capsys.readouterr().err == ""  # the first process said it
    assert not (tmp_path / "s").exists()


def test_a_launched_frozen_training_shares_the_encoding_and_trains_as_one_process(dataset: Path, tmp_path: Path):
    """The default training (cross-fitted L-BFGS heads on cached features) in two processes: the same run as in one.

    Only the encoding of the cold cache is shared; each process then trains the same heads on all features.
    """
    args = ["train", "--data", str(dataset), "--quiet", "--set", "model.encoders=[vader,lexicon]"]
    done = launch([*args, "--out", str(tmp_path / "two")], child_env(tmp_path / "launch-cache"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = RunFolder.open(tmp_path / "two").metrics(), RunFolder.open(tmp_path / "one").metrics()
    assert two["processes"] == 2 and one["processes"] == 1
    (alone,) = one["work_per_process"]
    assert [w["encoded"] > 0 for w in two["work_per_process"]] == [True, True]
    assert sum(w["encoded"] for w in two["work_per_process"]) == alone["encoded"]
    assert [w["optimizer_steps"] for w in two["work_per_process"]] == [alone["optimizer_steps"]] * 2
    assert {k: two[k] for k in ("accuracy", "macro_f1", "best_epoch", "decision")} == {
        k: one[k] for k in ("accuracy", "macro_f1", "best_epoch", "decision")}
    launched, single = val_probabilities(tmp_path / "two"), val_probabilities(tmp_path / "one")
    assert list(launched) == list(single)
    np.testing.assert_allclose(np.stack(list(launched.values())), np.stack(list(single.values())), atol=1e-6)


def test_a_launched_command_leaves_its_process_group_when_it_ends(tmp_path: Path, monkeypatch, capsys):
    """A gloo group left to the interpreter's shutdown now and then aborts the finished process (SIGABRT)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as a launcher says it
    monkeypatch.setenv("RANK", "0")
    try:
        assert main(["models"]) == 2  # a user error ends the command in every process: the group is left too
        assert "runs as one process" in capsys.readouterr().err
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_launched_process_exits_with_its_code_and_its_output_flushed(tmp_path: Path):
    """A launched process skips the interpreter's teardown (where gloo's threads could abort it): nothing is lost."""
    env = dict(child_env(tmp_path / "cache"), WORLD_SIZE="2", RANK="0")
    done = subprocess.run([sys.executable, "-m", "mmsent.cli", "models"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("mmsent: error:") == 1 and "runs as one process" in done.stderr
    done = subprocess.run([sys.executable, "-m", "mmsent.cli", "models"], env=dict(env, WORLD_SIZE="1"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "default" in done.stdout
