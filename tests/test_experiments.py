"""The optimisation stage end to end on synthetic data: search, variants, seeds, robustness, ablation."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsent.api import evaluate
from mmsent.cli import main
from mmsent.config import load_config
from mmsent.experiments.perturb import (
    PERTURBATIONS,
    char_typos,
    gaussian_noise,
    remove_hashtags,
)
from mmsent.experiments.search import GridSampler, SearchSpace, run_search
from mmsent.run_folder import read_manifest
from mmsent.tables import read_table

TINY = ["--set", "model.encoders=[vader]", "--set", "train.epochs=3", "--set", "model.hidden_dim=8", "--quiet"]


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text("train.lr: [1.0e-3, 3.0e-3]\nmodel.hidden_dim: [8, 16]\n")
    return path


def _search(dataset: Path, out: Path, grid: Path, *extra: str) -> int:
    return main(["search", "--data", str(dataset), "--out", str(out), "--grid", str(grid), *TINY[:-1], *extra])


def test_grid_search_resumes_runs_every_combination_once_and_best_yaml_trains(dataset, tmp_path, capsys):
    out, grid = tmp_path / "search", _grid(tmp_path)
    assert _search(dataset, out, grid, "--trials", "2") == 0  # stopped part-way
    assert len(read_table(out / "results.csv")) == 2
    first = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("trial-*/metrics.json")}
    assert _search(dataset, out, grid) == 0  # resumes
    rows = read_table(out / "results.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]  # a 2x2 grid gives 4 trials
    assert {(r["train.lr"], r["model.hidden_dim"]) for r in rows} == {("0.001", "8"), ("0.001", "16"), ("0.003", "8"), ("0.003", "16")}
    for name, mtime in first.items():  # the first call's trials were not trained again
        assert (out / "trials" / name / "metrics.json").stat().st_mtime_ns == mtime
    scores = [float(r["macro_f1"]) for r in rows if r["macro_f1"]]
    assert scores == sorted(scores, reverse=True)
    assert len(list((out / "trials").glob("trial-*/metrics.json"))) == 4
    for name in ["results.md", "search_trials.png", "search_params.png", "study.db"]:
        assert (out / name).is_file(), name
    assert read_manifest(out)["kind"] == "search" and read_manifest(out)["trials"] == 4
    capsys.readouterr()
    assert _search(dataset, out, grid) == 0  # the grid is exhausted: nothing runs
    assert "ran 0 trial(s)" in capsys.readouterr().out
    best = load_config(out / "best.yaml")
    assert best.model.encoders == ["vader"] and best.model.hidden_dim in (8, 16)
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "best-run"), "--config", str(out / "best.yaml"), "--quiet"]) == 0


def test_search_reruns_a_trial_that_was_interrupted(dataset, tmp_path, monkeypatch):
    import mmsent.experiments.search as search

    out, grid = tmp_path / "search", tmp_path / "grid.yaml"
    grid.write_text("train.lr: [1.0e-3, 3.0e-3]\n")
    real_train = search.train

    def broken_train(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "train", broken_train)
    assert _search(dataset, out, grid) == 130  # interrupted in the first trial
    monkeypatch.setattr(search, "train", real_train)
    assert _search(dataset, out, grid) == 0
    rows = read_table(out / "results.csv")
    done = [r for r in rows if r["state"] == "complete"]
    assert len(done) == 2 and {r["train.lr"] for r in done} == {"0.001", "0.003"}
    assert len(rows) == 2  # the interrupted (failed) trial is not a row: its point was trained again


def test_grid_sampler_reruns_a_failed_point_enqueued_when_one_point_is_left():
    import optuna

    def fails(trial):
        trial.suggest_categorical("x", [0, 1])
        raise RuntimeError("interrupted")

    study = optuna.create_study(sampler=GridSampler({"x": [0, 1]}, seed=0), direction="maximize")
    study.optimize(fails, n_trials=1, catch=(RuntimeError,))
    failed = study.trials[0]
    # the failed point counts as visited for the sampler, one point is left: Optuna 5.0's own sampler raised KeyError here
    study.enqueue_trial(failed.params)
    study.optimize(lambda t: float(t.suggest_categorical("x", [0, 1])), n_trials=1)
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[1].params == failed.params


def test_two_workers_share_one_sqlite_study_without_duplicates(dataset, tmp_path):
    cfg = load_config(None, ["model.encoders=[vader]", "train.epochs=3", "model.hidden_dim=8"])
    space = SearchSpace(grid={"train.lr": [1e-3, 3e-3], "model.hidden_dim": [8, 16]})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    errors = []

    def worker(i: int) -> None:
        try:
            run_search(dataset, tmp_path / f"worker{i}", cfg, space, "test", storage=storage, study_name="shared")
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    import optuna

    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 4
    # each worker trained part of the grid, into its own folder
    assert sum(len(list((tmp_path / f"worker{i}" / "trials").glob("trial-*"))) for i in range(2)) == 4


def test_tpe_search_over_ranges(dataset, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nmodel.hidden_dim: {choices: [8, 16]}\n")
    out = tmp_path / "tpe"
    args = ["search", "--data", str(dataset), "--out", str(out), "--space", str(space), *TINY[:-1]]
    assert main(args) == 2  # ranges need --trials
    assert main([*args, "--trials", "2", "--no-prune"]) == 0
    rows = read_table(out / "results.csv")
    assert len(rows) == 2 and all(1e-4 <= float(r["train.lr"]) <= 1e-2 for r in rows)
    assert load_config(out / "best.yaml").model.hidden_dim in (8, 16)


def test_variants_side_by_side(dataset, tmp_path):
    variants = tmp_path / "variants.yaml"
    variants.write_text("base: {}\nln: {model.layernorm: true}\nwide: {model.hidden_dim: 32}\n")
    out = tmp_path / "variants"
    assert main(["variants", "--data", str(dataset), "--out", str(out), "--variants", str(variants), "--preset", "mlp",
                 *TINY]) == 0
    rows = read_table(out / "results.csv")
    assert [r["variant"] for r in rows] == ["base", "ln", "wide"]
    for column in ["accuracy", "macro_f1", "macro_precision", "macro_recall", "f1_neutral", "parameters", "train_seconds"]:
        assert all(r[column] != "" for r in rows), column
    assert int(rows[2]["parameters"]) > int(rows[0]["parameters"])
    assert load_config(out / "variants" / "ln" / "config.yaml").model.layernorm is True
    splits = [json.loads((out / "variants" / n / "split.json").read_text()) for n in ("base", "ln", "wide")]
    assert splits[0] == splits[1] == splits[2]  # the same split for every variant
    assert (out / "variants.png").is_file() and read_manifest(out)["kind"] == "variants"
    # every variant against the first on the same validation posts, with a paired bootstrap interval
    assert rows[0]["vs_reference"] == "reference"
    for row in rows[1:]:
        for score in ("macro_f1", "accuracy"):
            low, high = (float(x) for x in row[f"delta_{score}_ci"].strip("[]").split(","))
            delta = float(row[f"delta_{score}"])
            assert low <= delta <= high
            assert delta == pytest.approx(float(row[score]) - float(rows[0][score]), abs=1e-4)
        assert row["vs_reference"]
    assert "2,000 resamples" in read_manifest(out)["significance"]
    assert "paired bootstrap" in (out / "results.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: {model.nope: 1}\n")
    assert main(["variants", "--data", str(dataset), "--out", str(out), "--variants", str(bad), *TINY]) == 2


def test_seeds_give_rows_mean_std_and_confidence_interval(dataset, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["seeds", "--data", str(dataset), "--out", str(out), "--seeds", "42,123,2024", *TINY]) == 0
    rows = read_table(out / "results.csv")
    assert [r["seed"] for r in rows] == ["42", "123", "2024", "mean", "std", "ci95_low", "ci95_high"]
    f1 = np.array([float(r["macro_f1"]) for r in rows[:3]])
    stats = {r["seed"]: float(r["macro_f1"]) for r in rows[3:]}
    assert stats["mean"] == pytest.approx(f1.mean(), abs=1e-9)
    assert stats["std"] == pytest.approx(f1.std(ddof=1), abs=1e-9)
    half = 4.302652729911275 * f1.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert stats["ci95_high"] - stats["mean"] == pytest.approx(half, abs=1e-9)
    splits = {(out / f"seed-{s}" / "split.json").read_text() for s in (42, 123, 2024)}
    assert len(splits) == 1  # the split stays fixed unless --vary-split
    printed = capsys.readouterr().out
    assert "standard error" in printed and "400-sample" in printed
    assert "standard error" in (out / "results.md").read_text()
    assert (out / "seeds.png").is_file() and read_manifest(out)["kind"] == "seeds"


def _val_labels(data: Path, run: Path, path: Path) -> Path:
    tags = dict(line.split(",") for line in (data / "train.txt").read_text().splitlines()[1:])
    val = json.loads((run / "split.json").read_text())["val"]
    path.write_text("guid,tag\n" + "".join(f"{g},{tags[g]}\n" for g in val))
    return path


def test_robustness_clean_equals_evaluate_and_perturbations_are_tabulated(trained_run, tmp_path):
    data, run = trained_run
    out = tmp_path / "robust"
    assert main(["robustness", "--run", str(run), "--data", str(data), "--out", str(out), "--quiet",
                 "--perturbations", "noise,jpeg,typos,hashtags", "--levels", "noise=40", "--levels", "jpeg=5,50",
                 "--levels", "typos=0.3", "--levels", "hashtags=1"]) == 0
    rows = read_table(out / "results.csv")
    # levels mild to harsh: a lower JPEG quality is harsher
    assert [(r["perturbation"], float(r["level"])) for r in rows] == [
        ("clean", 0.0), ("noise", 40.0), ("jpeg", 50.0), ("jpeg", 5.0), ("typos", 0.3), ("hashtags", 1.0)]
    for r in rows[1:]:
        low, high = (float(x) for x in r["drop_macro_f1_ci"].strip("[]").split(","))
        assert low <= float(r["drop_macro_f1"]) <= high and r["vs_clean"] in ("better", "worse", "within noise")
    assert 0 < read_manifest(out)["clean_macro_f1_se"] < 0.5
    plain = evaluate(run, data, _val_labels(data, run, tmp_path / "val.txt"), quiet=True)
    assert float(rows[0]["accuracy"]) == pytest.approx(plain["accuracy"], abs=1e-4)
    assert float(rows[0]["macro_f1"]) == pytest.approx(plain["macro_f1"], abs=1e-4)
    for r in rows[1:]:
        assert float(r["drop_macro_f1"]) == pytest.approx(float(rows[0]["macro_f1"]) - float(r["macro_f1"]), abs=1e-4)
    assert (out / "robustness.png").is_file() and read_manifest(out)["kind"] == "robustness"
    assert not list((tmp_path / "cache").glob("**/*.npz"))  # perturbed features never reach a cache
    assert main(["robustness", "--run", str(run), "--data", str(data), "--out", str(out), "--levels", "fog=1"]) == 2


def test_ablation_rows_blanked_and_retrained(trained_run, tmp_path):
    data, run = trained_run
    out = tmp_path / "ablate"
    assert main(["ablate", "--run", str(run), "--data", str(data), "--out", str(out), "--retrain", "--quiet"]) == 0
    rows = read_table(out / "results.csv")
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("both", "trained on both"), ("text only", "blanked at inference"), ("image only", "blanked at inference"),
        ("text only", "retrained"), ("image only", "retrained")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert float(rows[0]["macro_f1"]) == pytest.approx(metrics["macro_f1"], abs=1e-4)
    assert load_config(out / "retrain-text" / "config.yaml").model.encoders == ["minilm", "vader", "lexicon"]
    assert load_config(out / "retrain-image" / "config.yaml").model.encoders == ["efficientnet_lite0"]
    assert json.loads((out / "retrain-text" / "split.json").read_text()) == json.loads((run / "split.json").read_text())
    assert (out / "ablation.png").is_file() and read_manifest(out)["kind"] == "ablation"
    # each setting against both modalities, paired on the same validation posts
    assert rows[0]["vs_reference"] == "reference" and all(r["delta_macro_f1_ci"].startswith("[") for r in rows[1:])
    for r in rows[1:]:
        assert float(r["delta_macro_f1"]) == pytest.approx(float(r["macro_f1"]) - float(rows[0]["macro_f1"]), abs=1e-4)


def test_ablation_needs_two_modalities(dataset, tmp_path):
    run = tmp_path / "text-run"
    assert main(["train", "--data", str(dataset), "--out", str(run), *TINY]) == 0
    assert main(["ablate", "--run", str(run), "--data", str(dataset), "--out", str(tmp_path / "a")]) == 2


def test_perturbations_are_pure_and_seeded():
    img = Image.new("RGB", (32, 24), (120, 80, 40))
    a, b = gaussian_noise(img, 20, seed=1), gaussian_noise(img, 20, seed=1)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(gaussian_noise(img, 20, seed=2)))
    assert (np.asarray(img) == (120, 80, 40)).all()  # the input is untouched
    text = "what a lovely day at the beach #summer #fun"
    assert char_typos(text, 0.2, 3) == char_typos(text, 0.2, 3) != text
    assert char_typos(text, 0.0, 3) == text
    assert remove_hashtags(text, 1.0, 0).split() == "what a lovely day at the beach".split()
    for p in PERTURBATIONS.values():
        sample = img if p.modality == "image" else text
        out = p.fn(sample, p.levels[-1], 0)
        assert (out.size == img.size) if p.modality == "image" else isinstance(out, str)
