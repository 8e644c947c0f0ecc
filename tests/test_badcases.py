"""Bad-case mining out of fold, targeted augmentation, the leak guard on data.augment, retraining, ensembles."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

from mmsent import LABELS
from mmsent.api import ensemble_proba, load_run, load_runs
from mmsent.cli import main
from mmsent.data.labels import read_label_file
from mmsent.engine.metrics import compute_metrics
from mmsent.experiments.augment import (
    AugmentOptions,
    augment_text,
    random_deletion,
    random_swap,
)
from mmsent.experiments.badcases import CASE_COLUMNS
from mmsent.run_folder import read_manifest
from mmsent.tables import read_table

FAST = ["--set", "model.encoders=[vader]", "--set", "train.epochs=4", "--set", "train.ensemble=3", "--quiet"]


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic data set, a base run and its out-of-fold mining (3 folds), shared by this module."""
    root = tmp_path_factory.mktemp("bad")
    data = make_dataset(root / "ds", per_class=12)
    run = root / "run"
    cache = ["--set", f"runtime.cache_dir={root / 'cache'}"]
    assert main(["train", "--data", str(data), "--out", str(run), *FAST, *cache]) == 0
    out = root / "bc"
    assert main(["badcases", "--run", str(run), "--data", str(data), "--out", str(out), "--folds", "3", "--quiet"]) == 0
    split = json.loads((run / "split.json").read_text())
    return {"root": root, "data": data, "run": run, "out": out, "split": split, "cache": cache}


def test_out_of_fold_never_predicts_a_guid_with_a_model_that_trained_on_it(mined):
    oof = rows(mined["out"] / "oof_predictions.csv")
    train_guids = mined["split"]["train"]
    assert sorted(r["guid"] for r in oof) == sorted(train_guids)  # every training guid exactly once
    for fold in range(3):
        fold_split = json.loads((mined["out"] / "folds" / f"fold{fold}" / "split.json").read_text())
        seen = set(fold_split["train"]) | set(fold_split["val"])  # trained on, or early-stopped on
        predicted = {r["guid"] for r in oof if r["fold"] == str(fold)}
        assert predicted and seen.isdisjoint(predicted)
        assert seen | predicted == set(train_guids)


def test_fold_predictions_are_the_fold_models(mined):
    oof = rows(mined["out"] / "oof_predictions.csv")
    from mmsent.data.records import load_dataset

    records = {r.guid: r for r in load_dataset(mined["data"]).train}
    held = [r for r in oof if r["fold"] == "1"]
    probs = load_run(mined["out"] / "folds" / "fold1").predict_proba([records[r["guid"]] for r in held], quiet=True)
    expected = np.array([[float(r[f"p_{lab}"]) for lab in LABELS] for r in held])
    assert np.allclose(probs, expected, atol=1e-5)


def test_validation_and_test_guids_are_never_mined(mined):
    oof = {r["guid"] for r in rows(mined["out"] / "oof_predictions.csv")}
    test = {e.guid for e in read_label_file(mined["data"] / "test_without_label.txt", labelled=False)[0]}
    assert oof.isdisjoint(mined["split"]["val"]) and oof.isdisjoint(test)
    for fold in range(3):
        fold_split = json.loads((mined["out"] / "folds" / f"fold{fold}" / "split.json").read_text())
        used = set(fold_split["train"]) | set(fold_split["val"])
        assert used.isdisjoint(mined["split"]["val"]) and used.isdisjoint(test)


def test_bad_case_csv_columns_and_analysis(mined):
    out = mined["out"]
    oof, bad = rows(out / "oof_predictions.csv"), rows(out / "bad_cases.csv")
    assert list(oof[0]) == CASE_COLUMNS and (not bad or list(bad[0]) == CASE_COLUMNS)
    assert sorted(r["guid"] for r in bad) == sorted(r["guid"] for r in oof if r["tag"] != r["pred"])
    confidences = [float(r["confidence"]) for r in bad]
    assert confidences == sorted(confidences, reverse=True)  # most confident mistakes first
    assert all(Path(r["image_path"]).is_absolute() and Path(r["image_path"]).is_file() for r in bad)
    first = oof[0]
    assert first["pred"] == LABELS[int(np.argmax([float(first[f"p_{lab}"]) for lab in LABELS]))]
    assert abs(sum(float(first[f"p_{lab}"]) for lab in LABELS) - 1) < 1e-4
    assert (first["image_width"], first["image_height"]) == ("64", "48") and int(first["image_bytes"]) > 0
    assert {r["text_fallback"] for r in oof} == {"True", "False"}  # the synthetic set has GB18030 files
    assert all(r["has_url"] == "True" and r["n_hashtags"] == "1" for r in oof)
    table = read_table(out / "results.csv")
    for factor in ("text length", "emoji", "image size", "true class"):
        assert sum(int(r["n"]) for r in table if r["factor"] == factor) == len(oof)
    for r in table:
        assert float(r["ci_low"]) <= float(r["error_rate"]) <= float(r["ci_high"])
    confusion = read_table(out / "confusion.csv")
    assert sum(int(r["errors"]) for r in confusion) == len(bad)
    for name in ("text_length", "true_class"):
        assert (out / f"error_by_{name}.png").is_file()
    manifest = read_manifest(out)
    assert manifest["kind"] == "badcases" and manifest["n_bad"] == len(bad)
    # the synthetic posts have no emoji and one image size: one bar compares nothing, so those figures are left
    # out with a sentence
    assert not (out / "error_by_emoji.png").exists() and not (out / "error_by_image_size.png").exists()
    assert f"No figure of the error rate by emoji: every post falls in one bucket (no emoji, n={len(oof)})." in manifest["notes"]


def test_mining_refuses_a_split_that_leaks(mined, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(mined["run"], run)
    split = dict(mined["split"])
    split["train"] = split["train"] + split["val"][:1]
    (run / "split.json").write_text(json.dumps(split))
    args = ["badcases", "--run", str(run), "--data", str(mined["data"]), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2 and "split.json" in capsys.readouterr().err  # edited after training: refused as damaged
    reseal(run)  # as if a run had been written with that split: the leak guard must still refuse it
    code = main(args)
    assert code == 2 and split["val"][0] in capsys.readouterr().err


def reseal(run: Path) -> None:
    """Record the run's files as they are now in its completion marker."""
    import hashlib

    marker = json.loads((run / "complete.json").read_text())
    for name in marker["files"]:
        data = (run / name).read_bytes()
        marker["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (run / "complete.json").write_text(json.dumps(marker))


def augment(mined, out: Path, seed: int = 0, copies: int = 2) -> Path:
    args = ["augment", "--badcases", str(mined["out"] / "oof_predictions.csv"), "--data", str(mined["data"]),
            "--out", str(out), "--copies", str(copies), "--seed", str(seed), "--quiet"]
    assert main(args) == 0
    return out


def test_augment_writes_copies_and_manifest(mined, tmp_path: Path):
    out = augment(mined, tmp_path / "aug")
    manifest = rows(out / "manifest.csv")
    sources = [r["guid"] for r in rows(mined["out"] / "oof_predictions.csv")]
    assert len(manifest) == 2 * len(sources)
    assert list(manifest[0]) == ["guid", "source_guid", "tag", "operations"]
    real = {e.guid for e in read_label_file(mined["data"] / "train.txt", labelled=True)[0]}
    for row in manifest:
        assert row["guid"].startswith("aug-") and row["guid"] not in real and row["source_guid"] in sources
        assert "crop(" in row["operations"] and "jitter(" in row["operations"] and "normalise" in row["operations"]
        with Image.open(out / "data" / f"{row['guid']}.jpg") as img:
            assert img.size == (64, 48)
        text = (out / "data" / f"{row['guid']}.txt").read_text(encoding="utf-8")
        assert f"#{row['tag']}day" in text  # hashtags are never swapped away or deleted
    assert read_manifest(out)["kind"] == "augment"
    # deterministic from the seed; another seed gives other copies
    again = augment(mined, tmp_path / "again")
    other = augment(mined, tmp_path / "other", seed=1)
    g = manifest[0]["guid"]
    assert (out / "data" / f"{g}.jpg").read_bytes() == (again / "data" / f"{g}.jpg").read_bytes()
    assert rows(again / "manifest.csv") == manifest
    assert rows(other / "manifest.csv")[0]["operations"] != manifest[0]["operations"]


def test_text_augmentations_keep_hashtags_mentions_and_links():
    import random

    words = "RT @bob: so happy #sunday today at http://t.co/x the sea".split()
    for seed in range(20):
        rng = random.Random(seed)
        swapped, _ = random_swap(words, rng, 0.5)
        kept, _ = random_deletion(words, rng, 0.9)
        assert sorted(swapped) == sorted(words)
        for protected in ("RT", "@bob:", "#sunday", "http://t.co/x"):
            assert swapped.index(protected) == words.index(protected) and protected in kept
    text, ops = augment_text("sooooo happy \U0001f602 #fun", 3, AugmentOptions(synonyms=False))
    assert "\U0001f602" not in text and "#fun" in text and ops[0] == "normalise"
    assert augment_text("a b c d e", 5, AugmentOptions()) == augment_text("a b c d e", 5, AugmentOptions())


def copy_post(data: Path, folder: Path, source: str, guid: str) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for ext in ("txt", "jpg"):
        shutil.copy(data / "data" / f"{source}.{ext}", folder / "data" / f"{guid}.{ext}")


def aug_folder(mined, folder: Path, entries: list[tuple[str, str]]) -> Path:
    """An augmentation folder holding (guid, source_guid) copies of the source's files."""
    tags = {e.guid: e.tag for e in read_label_file(mined["data"] / "train.txt", labelled=True)[0]}
    lines = ["guid,source_guid,tag,operations"]
    for guid, source in entries:
        copy_post(mined["data"], folder, source, guid)
        lines.append(f"{guid},{source},{tags.get(source, 'positive')},copy")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def train_with(mined, out: Path, augment: Path) -> int:
    return main(["train", "--data", str(mined["data"]), "--out", str(out), *FAST, *mined["cache"],
                 "--set", f"data.augment=[{augment}]"])


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("copy_of_val", "is an augmented copy of {g}, which is in the validation split"),
        ("copy_of_test", "is an augmented copy of {g}, which is in the test list"),
        ("val_under_own_guid", "guid {g} is in the training data and in the validation split"),
        ("test_under_own_guid", "guid {g} is in the training data and in the test list"),
        ("manifest_file_copy_of_val", "is an augmented copy of {g}, which is in the validation split"),
    ],
)
def test_leak_guard_rejects_each_leak_through_data_augment(mined, tmp_path: Path, capsys, kind, needle):
    val = mined["split"]["val"][0]
    test = read_label_file(mined["data"] / "test_without_label.txt", labelled=False)[0][0].guid
    g = test if "test" in kind else val
    new = g if "own_guid" in kind else f"aug-x-{g}-0"
    folder = aug_folder(mined, tmp_path / "aug", [(f"aug-x-{mined['split']['train'][0]}-0", mined["split"]["train"][0]),
                                                  (new, g)])
    target = folder / "manifest.csv" if kind == "manifest_file_copy_of_val" else folder
    out = tmp_path / "r"
    assert train_with(mined, out, target) == 2
    err = capsys.readouterr().err
    assert "training refused" in err and needle.format(g=g) in err and "Traceback" not in err
    assert not (out / "model.safetensors").exists()


def test_copies_without_source_are_refused(mined, tmp_path: Path, capsys):
    folder = aug_folder(mined, tmp_path / "aug", [("aug-y-1", mined["split"]["train"][0])])
    (folder / "manifest.csv").write_text("guid,source_guid,tag,operations\naug-y-1,,positive,copy\n")
    assert train_with(mined, tmp_path / "r", folder) == 2
    assert "without a source_guid" in capsys.readouterr().err
    assert train_with(mined, tmp_path / "r", tmp_path / "nothing") == 2
    assert "manifest not found" in capsys.readouterr().err


def test_clean_augmentation_is_added_to_training_only(mined, tmp_path: Path):
    sources = mined["split"]["train"][:3]
    folder = aug_folder(mined, tmp_path / "aug", [(f"aug-z-{s}-0", s) for s in sources])
    out = tmp_path / "r"
    assert train_with(mined, out, folder) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["val"] == mined["split"]["val"]
    assert split["train"] == mined["split"]["train"]
    assert split["augmented"] == [f"aug-z-{s}-0" for s in sources]


def test_retrain_prints_before_and_after_on_the_same_validation_split(mined, tmp_path: Path, capsys):
    aug = augment(mined, tmp_path / "aug", copies=1)
    n_copies = len(rows(aug / "manifest.csv"))
    capsys.readouterr()
    out = tmp_path / "run2"
    assert main(["retrain", "--run", str(mined["run"]), "--augment", str(aug), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "macro_f1" in printed
    before = json.loads((mined["run"] / "metrics.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    assert after["n_val"] == before["n_val"] and after["n_train"] == before["n_train"] + n_copies
    assert json.loads((out / "split.json").read_text())["val"] == mined["split"]["val"]
    table = {r["metric"]: r for r in read_table(out / "results.csv")}
    assert float(table["macro_f1"]["before"]) == pytest.approx(before["macro_f1"])
    assert float(table["macro_f1"]["after"]) == pytest.approx(after["macro_f1"])
    for score in ("accuracy", "macro_f1"):  # paired bootstrap on the same validation posts
        low, high = (float(x) for x in table[score]["delta_ci"].strip("[]").split(","))
        assert low <= float(table[score]["delta"]) <= high and table[score]["verdict"]
    assert "95% paired bootstrap interval" in printed
    manifest = read_manifest(out)
    assert manifest["kind"] == "retrain" and manifest["n_augmented"] == n_copies
    assert (out / "model.safetensors").is_file()


def test_retrain_refuses_copies_of_validation_guids(mined, tmp_path: Path, capsys):
    val = mined["split"]["val"][0]
    folder = aug_folder(mined, tmp_path / "aug", [(f"aug-v-{val}-0", val)])
    code = main(["retrain", "--run", str(mined["run"]), "--augment", str(folder), "--out", str(tmp_path / "r2"),
                 "--data", str(mined["data"]), "--quiet"])
    assert code == 2 and "validation split" in capsys.readouterr().err


def test_ensemble_averages_the_runs_probabilities(mined, tmp_path: Path, capsys):
    data = mined["data"]
    second = tmp_path / "seed2"
    assert main(["train", "--data", str(data), "--out", str(second), *FAST, *mined["cache"],
                 "--set", "train.seed=7", "--set", "train.epochs=6"]) == 0
    runs = [mined["run"], second]
    from mmsent.data.records import load_dataset

    records = load_dataset(data).train
    single = [load_run(r).predict_proba(records, quiet=True) for r in runs]
    mean = ensemble_proba(load_runs(runs), records)
    assert np.allclose(mean, (single[0] + single[1]) / 2, atol=1e-6)
    assert np.array_equal(ensemble_proba(load_runs(runs[0]), records), single[0])  # one run: unchanged
    out = tmp_path / "pred.txt"
    args = ["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(data),
            "--guids", str(data / "train.txt"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    predicted = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert predicted == [LABELS[i] for i in mean.argmax(axis=1)]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(data),
                 "--labels", str(data / "train.txt"), "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    y = np.array([LABELS.index(r.tag) for r in records])
    assert metrics["macro_f1"] == pytest.approx(compute_metrics(y, mean)["macro_f1"])
    assert len(metrics["ensemble_of"]) == 2
