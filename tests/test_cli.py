"""The command contract end to end: train, evaluate, predict, run, data check; user errors exit 2."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmsent.api import load_run
from mmsent.cli import main
from mmsent.config import load_config


def test_train_writes_a_complete_run(trained_run):
    _, run = trained_run
    for name in ["config.yaml", "model.safetensors", "model.json", "metrics.json", "history.csv",
                 "split.json", "val_predictions.csv", "plots/curves.png", "plots/confusion.png", "plots/roc.png"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ["accuracy", "macro_f1", "macro_precision", "macro_recall", "per_class", "confusion_matrix"]:
        assert key in metrics
    assert metrics["n"] == 11 and sum(map(sum, metrics["confusion_matrix"])) == 11
    # the drawn colours and words make the synthetic task learnable
    assert metrics["macro_f1"] > 0.7
    assert load_config(run / "config.yaml").train.epochs == 15
    assert set(load_file(str(run / "model.safetensors")))  # plain safetensors
    split = json.loads((run / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"])
    # the library writes the manifest, with the preset and the command
    manifest = json.loads((run / "experiment.json").read_text())
    assert manifest["kind"] == "train" and manifest["preset"] == "default" and "--preset default" in manifest["command"]


def test_a_data_set_too_small_to_split_is_a_message(tmp_path: Path, capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "tiny", per_class=2)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot split 6 labelled posts" in err and "Traceback" not in err


def test_predict_writes_every_guid_once_in_order(trained_run, tmp_path: Path):
    data, run = trained_run
    guids = ["104", "140", "101", "143"]
    listing = tmp_path / "list.txt"
    listing.write_text("guid,tag\n" + "".join(f"{g},whatever\n" for g in guids))
    out = tmp_path / "out" / "pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(data), "--guids", str(listing), "--out", str(out), "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "guid,tag"
    assert [line.split(",")[0] for line in lines[1:]] == guids
    assert all(line.split(",")[1] in ("positive", "neutral", "negative") for line in lines[1:])


def test_predict_needs_only_the_data_folder_and_the_list(trained_run, tmp_path: Path):
    data, run = trained_run
    only = tmp_path / "only"
    (only / "data").mkdir(parents=True)
    for guid in ("101", "140"):
        for ext in ("txt", "jpg"):
            (only / "data" / f"{guid}.{ext}").write_bytes((data / "data" / f"{guid}.{ext}").read_bytes())
    listing = tmp_path / "l.txt"
    listing.write_text("guid,tag\n140,null\n101,null\n")
    out = tmp_path / "p.txt"
    assert main(["predict", "--run", str(run), "--data", str(only), "--guids", str(listing), "--out", str(out), "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_bad_list_is_reported_before_the_model_loads(trained_run, tmp_path: Path, capsys, monkeypatch, command):
    data, run = trained_run
    listing = tmp_path / "l.txt"
    listing.write_text("guid,null\n140,null\n")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the list was checked")

    monkeypatch.setattr("mmsent.api.load_runs", no_loading)
    option = "--guids" if command == "predict" else "--labels"
    extra = ["--out", str(tmp_path / "p.txt")] if command == "predict" else []
    assert main([command, "--run", str(run), "--data", str(data), option, str(listing), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert "first line must be the header 'guid,tag'" in err and str(listing) in err and "Traceback" not in err


def test_evaluate_prints_metrics_json(trained_run, capsys):
    data, run = trained_run
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--labels", str(data / "train.txt"), "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 42 and 0.0 <= metrics["macro_f1"] <= 1.0


def test_loaded_run_is_reproducible(trained_run):
    from mmsent.data.records import load_dataset

    data, run = trained_run
    records = load_dataset(data).test
    a = load_run(run).predict_proba(records, quiet=True)
    b = load_run(run).predict_proba(records, quiet=True)
    assert a.shape == (6, 3) and (a == b).all()


def test_same_seed_same_model(dataset: Path, tmp_path: Path):
    def train(out: Path) -> dict:
        args = ["train", "--data", str(dataset), "--out", str(out), "--quiet", "--set", "train.epochs=3",
                "--set", "model.encoders=[vader,efficientnet_lite0]"]
        assert main(args) == 0
        return json.loads((out / "metrics.json").read_text())

    a, b = train(tmp_path / "a"), train(tmp_path / "b")
    assert a["macro_f1"] == b["macro_f1"] and a["confusion_matrix"] == b["confusion_matrix"]
    assert b["encoder_cache"]["efficientnet_lite0"]["computed"] == 0  # second run does no encoding
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_run_predicts_the_test_list(dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--data", str(dataset), "--out", str(out), "--quiet", "--set", "train.epochs=3"]) == 0
    lines = (out / "predictions.txt").read_text().splitlines()
    expected = (dataset / "test_without_label.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == [line.split(",")[0] for line in expected]
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and "predictions.txt" in printed
    # the in-memory model of `run` and the saved checkpoint predict the same
    again = tmp_path / "again.txt"
    assert main(["predict", "--run", str(out), "--data", str(dataset), "--guids",
                 str(dataset / "test_without_label.txt"), "--out", str(again), "--quiet"]) == 0
    assert again.read_text() == (out / "predictions.txt").read_text()


def test_bad_data_exits_2_with_every_problem(dataset: Path, tmp_path: Path, capsys):
    (dataset / "data" / "101.txt").unlink()
    (dataset / "data" / "102.jpg").write_bytes(b"broken")
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "guid 101" in err and "guid 102" in err and "Traceback" not in err


def test_skip_mode_writes_the_skipped_list(dataset: Path, tmp_path: Path):
    (dataset / "data" / "101.txt").unlink()
    out = tmp_path / "r"
    args = ["train", "--data", str(dataset), "--out", str(out), "--quiet", "--on-error", "skip",
            "--set", "train.epochs=2", "--set", "model.encoders=[vader]"]
    assert main(args) == 0
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped == [{"guid": "101", "path": str(dataset / "data" / "101.txt"), "reason": "text file is missing"}]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "train.nope=1"], "train.nope"),
        (["--set", "train.epochs=abc"], "train.epochs"),
        (["--set", "model.encoders=[nope]"], "unknown encoder"),
    ],
)
def test_config_errors_exit_2(dataset: Path, tmp_path: Path, capsys, args, needle):
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), "--quiet", *args])
    assert code == 2 and needle in capsys.readouterr().err


def test_missing_data_folder_exits_2(tmp_path: Path, capsys):
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "data/ is missing" in capsys.readouterr().err


def test_not_a_run_folder_exits_2(dataset: Path, tmp_path: Path, capsys):
    code = main(["predict", "--run", str(tmp_path), "--data", str(dataset), "--guids",
                 str(dataset / "test_without_label.txt"), "--out", str(tmp_path / "p.txt")])
    assert code == 2 and "not a trained run" in capsys.readouterr().err


def test_data_check_command(dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "report.json"
    assert main(["data", "check", "--data", str(dataset), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["counts"]["train"]["total"] == 36
    assert "GB18030" in capsys.readouterr().out


def test_models_lists_encoders_and_heads(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "minilm" in out and "concat" in out


def test_finetune_mode_trains_backbones_and_round_trips(dataset: Path, tmp_path: Path):
    out = tmp_path / "ft"
    args = ["train", "--data", str(dataset), "--out", str(out), "--quiet",
            "--set", "model.encoders=[vader,efficientnet_lite0]", "--preset", "finetune",
            "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.freeze_epochs=1",
            "--set", "runtime.num_workers=0"]
    assert main(args) == 0
    assert (out / "encoders.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] > 3_000_000  # the backbone trained too
    tuned = load_file(str(out / "encoders.safetensors"))
    from mmsent.encoders import create_encoder

    base = create_encoder("efficientnet_lite0").state_dict()
    changed = [k for k, v in base.items() if not torch.equal(v, tuned[f"efficientnet_lite0.{k}"])]
    assert changed  # weights moved after the frozen first epoch
    listing = dataset / "test_without_label.txt"
    pred = tmp_path / "p.txt"
    assert main(["predict", "--run", str(out), "--data", str(dataset), "--guids", str(listing), "--out", str(pred), "--quiet"]) == 0
    assert len(pred.read_text().splitlines()) == 7


def test_compare_tabulates_presets_and_reports_missing_weights(dataset: Path, tmp_path: Path, capsys, monkeypatch):
    from mmsent import presets

    monkeypatch.setitem(presets.PRESETS, "tiny_vader_effnet", {
        "description": "test", "config": {"model": {"encoders": ["vader", "efficientnet_lite0"]}}})
    monkeypatch.setitem(presets.PRESETS, "tiny_missing", {
        "description": "test", "config": {"model": {"encoders": ["vader", "efficientnet_lite0"],
                                                     "encoder_options": {"efficientnet_lite0": {"weights_path": "/nope.pth"}}}}})
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(dataset), "--out", str(out), "--presets", "tiny_vader_effnet,tiny_missing",
            "--ablate", "tiny_vader_effnet", "--quiet", "--set", "train.epochs=2"]
    assert main(args) == 0
    from mmsent.run_folder import read_manifest
    from mmsent.tables import read_table

    rows = read_table(out / "results.csv")
    assert [r["preset"] for r in rows] == ["tiny_vader_effnet", "tiny_vader_effnet (text only)",
                                           "tiny_vader_effnet (image only)", "tiny_missing"]
    assert all(r["status"] == "ok" for r in rows[:3])
    assert rows[3]["status"].startswith("weights missing") and "/nope.pth" in rows[3]["status"]
    assert "/nope.pth" in (out / "runs" / "tiny_missing" / "error.txt").read_text()
    assert float(rows[1]["params_m"]) < float(rows[0]["params_m"])
    for fig in ("metrics.png", "val_curves.png", "time_vs_score.png", "results.md"):
        assert (out / fig).is_file()
    assert read_manifest(out)["kind"] == "compare"
    # each trained row against the first, on the same validation posts; the failed row has nothing to compare
    assert rows[0]["vs_reference"] == "reference" and rows[3]["vs_reference"] == ""
    for row in rows[1:3]:
        low, high = (float(x) for x in row["delta_macro_f1_ci"].strip("[]").split(","))
        assert low <= float(row["delta_macro_f1"]) <= high
        assert row["vs_reference"] == "within noise" or "macro-F1" in row["vs_reference"] or "accuracy" in row["vs_reference"]
    assert "paired bootstrap" in (out / "results.md").read_text() and rows[0]["encode_cache"] in ("cold", "partly cached")


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_cross_attention_head_end_to_end(dataset: Path, tmp_path: Path, mode: str):
    out = tmp_path / mode
    args = ["train", "--data", str(dataset), "--out", str(out), "--quiet", "--preset", "mlp" if mode == "frozen" else mode,
            "--set", "model.encoders=[vader,efficientnet_lite0]", "--set", "model.head=cross_attention",
            "--set", "model.hidden_dim=32", "--set", "train.epochs=2",
            "--set", "train.batch_size=16", "--set", "runtime.num_workers=0"]
    assert main(args) == 0
    spec = json.loads((out / "model.json").read_text())
    assert spec["token_encoders"] == ["efficientnet_lite0"]  # 7x7 patches; VADER joins each as pooled features
    pred = tmp_path / f"{mode}.txt"
    assert main(["predict", "--run", str(out), "--data", str(dataset), "--guids",
                 str(dataset / "test_without_label.txt"), "--out", str(pred), "--quiet"]) == 0
    assert len(pred.read_text().splitlines()) == 7


def test_finetune_one_encoder_with_the_others_cached(dataset: Path, tmp_path: Path):
    out = tmp_path / "ft"
    args = ["train", "--data", str(dataset), "--out", str(out), "--quiet", "--preset", "finetune",
            "--set", "model.encoders=[minilm,efficientnet_lite0]", "--set", "train.finetune=[minilm]",
            "--set", "model.encoder_options.minilm.trainable_layers=1", "--set", "train.epochs=1",
            "--set", "train.batch_size=8", "--set", "runtime.num_workers=0"]
    assert main(args) == 0
    tuned = load_file(str(out / "encoders.safetensors"))
    assert tuned and all(k.startswith("minilm.") for k in tuned)  # the image encoder stayed as named
    from mmsent.encoders import create_encoder

    pretrained = create_encoder("minilm").state_dict()
    changed = [k for k, v in tuned.items() if not torch.equal(v, pretrained[k.removeprefix("minilm.")])]
    assert changed and all(".layer.5." in k for k in changed)  # only the top layer trained
    metrics = json.loads((out / "metrics.json").read_text())
    loaded = load_run(out)
    assert loaded.encoders["efficientnet_lite0"].tuned_digest is None and loaded.encoders["minilm"].tuned_digest
    pred = tmp_path / "p.txt"
    assert main(["predict", "--run", str(out), "--data", str(dataset), "--guids",
                 str(dataset / "test_without_label.txt"), "--out", str(pred), "--quiet"]) == 0
    assert metrics["n_val"] > 0 and len(pred.read_text().splitlines()) == 7


def test_commands_fix_the_allocators_mmap_threshold_where_glibc_allows():
    import platform

    from mmsent.allocator import return_large_blocks

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert return_large_blocks() is glibc  # elsewhere: nothing changes, no error
