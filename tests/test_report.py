"""The study report: sections from run and experiment folders, embedded figures, no network, a Markdown twin."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mmsent.cli import main
from mmsent.data.check import check_dataset
from mmsent.reporting.formatting import number
from mmsent.run_folder import write_manifest
from mmsent.tables import read_table, write_table


def figure(path: Path, colour=(200, 60, 60)) -> None:
    Image.new("RGB", (40, 30), colour).save(path, format="PNG")


def case_cards(html: str) -> list[str]:
    """The bad-case cards of a report page, each up to the end of its guid line."""
    return [part.split('<p class="text">')[0] for part in html.split('<div class="case">')[1:]]


def make_experiments(root: Path, data: Path) -> dict[str, Path]:
    """Hand-made experiment folders in the layout of mmsent.run_folder."""
    compare = root / "exps" / "compare"
    write_table([{"model": "minilm+concat", "macro_f1": 0.61234, "accuracy": 0.7},
                 {"model": "vader+concat", "macro_f1": 0.5, "accuracy": 0.65}], compare)
    write_manifest(compare, "compare", "mmsent compare --data DS --out exps/compare")
    figure(compare / "macro_f1.png")

    seeds = root / "exps" / "seeds"
    write_table([{"seed": 1, "macro_f1": 0.6}, {"seed": 2, "macro_f1": 0.62}], seeds)
    write_manifest(seeds, "seeds", "mmsent seeds --run R --seeds 1 2", mean_macro_f1=0.61, std_macro_f1=0.01)

    bad = root / "exps" / "badcases"
    write_table([{"kind": "confident errors", "count": 2}], bad)
    write_manifest(bad, "badcases", "mmsent badcases --run R --data DS --out exps/badcases")
    with (bad / "bad_cases.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "tag", "pred", "confidence", "text", "image_path", "loss"])
        writer.writerow(["101", "positive", "negative", "0.93", "<script>alert(1)</script> sunny", str(data / "data" / "101.jpg"), "2.1"])
        writer.writerow(["140", "negative", "positive", "0.81", "sad | but smiling", str(data / "data" / "140.jpg"), "1.7"])
        writer.writerow(["999", "neutral", "positive", "0.7", "image gone", str(data / "data" / "missing.jpg"), "1.2"])

    odd = root / "exps" / "nested" / "deeper"  # found two levels below a root
    write_table([{"metric": "x", "value": 1.5}], odd)
    write_manifest(odd, "calibration", "mmsent calibrate --run R")
    return {"compare": compare, "seeds": seeds, "badcases": bad, "odd": odd}


def sections_of(html: str) -> list[str]:
    return re.findall(r'<section id="[^"]+" class="kind-([a-z_]+)"', html)


def test_report_from_a_run_and_experiments(trained_run, tmp_path: Path):
    data, run = trained_run
    make_experiments(tmp_path, data)
    data_json = tmp_path / "data_report.json"
    data_json.write_text(json.dumps(check_dataset(data)))
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--runs", str(run), str(tmp_path / "exps"), "--out", str(out), "--data-report", str(data_json)]) == 0

    html = out.read_text(encoding="utf-8")
    # fixed order: data, known kinds in study order, the run, then unknown kinds
    assert sections_of(html) == ["data", "compare", "seeds", "badcases", "train", "calibration"]
    for absent in ("search", "robustness", "ablation", "variants", "retrain"):
        assert f"kind-{absent}" not in html  # experiments not run get no section
    # each section names the command that produced it
    for command in ("mmsent compare --data DS --out exps/compare", "mmsent seeds --run R --seeds 1 2",
                    "mmsent calibrate --run R", f"mmsent data check --data {data}"):
        assert command in html
    # numbers come from the files: the run's metrics.json and each results.csv
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"<dd>{metrics['macro_f1']:.4f}</dd>" in html
    assert "0.6123" in html and "minilm+concat" in html and "0.01" in html
    # self-contained: every image embedded, nothing fetched from the network
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) >= 3 + 1 + 1 + 2  # run plots, compare figure, class balance, two thumbnails
    assert all(src.startswith("data:image/") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html) and "url(http" not in html
    # text from files is escaped, never markup
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "image gone" in html  # a bad case whose image is missing keeps its text

    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Model comparison: compare" in md and "mmsent seeds --run R --seeds 1 2" in md
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert linked and all((out.parent / link).is_file() for link in linked)
    assert "sad \\| but smiling" in md


def test_report_leaves_out_what_was_not_run(trained_run, tmp_path: Path):
    _, run = trained_run
    out = tmp_path / "r.html"
    assert main(["report", "--runs", str(run), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert sections_of(html) == ["train"]
    assert "Data" not in re.findall(r"<h2>([^<]+)</h2>", html)


def test_report_without_any_run_is_an_error(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no run or experiment folder" in capsys.readouterr().err
    assert main(["report", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2


def test_report_from_real_folders_shows_every_bad_case_image_most_confident_first(tmp_path: Path, monkeypatch):
    """Folders written by the commands themselves, the data folder given relative to where they ran."""
    from conftest import make_dataset

    work = tmp_path / "work"
    make_dataset(work / "ds", per_class=14)
    monkeypatch.chdir(work)  # the commands run here with --data ds, as a user would
    fast = ["--set", "model.encoders=[vader]", "--set", "train.epochs=4", "--set", "train.ensemble=3", "--quiet"]
    assert main(["train", "--data", "ds", "--out", "runs/base", *fast]) == 0
    assert main(["badcases", "--run", "runs/base", "--data", "ds", "--out", "runs/bad", "--folds", "3", "--quiet"]) == 0
    assert main(["seeds", "--data", "ds", "--out", "runs/seeds", "--seeds", "1,2", *fast]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the report is built from another folder
    out = tmp_path / "report" / "report.html"
    assert main(["report", "--runs", str(work / "runs"), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")

    cards = case_cards(html)
    mistakes = read_table(work / "runs" / "bad" / "bad_cases.csv")
    assert cards and len(cards) == min(len(mistakes), 8)
    for card in cards:
        assert re.search(r'<img src="data:image/jpeg;base64,', card) and 'class="missing"' not in card
    shown = [float(c) for c in re.findall(r"predicted \w+ \((\d\.\d+)\)", html)]
    assert len(shown) == len(cards) and shown == sorted(shown, reverse=True)
    assert shown[0] == pytest.approx(max(float(r["confidence"]) for r in mistakes), abs=5e-5)

    # formatted numbers: mean ± std and [a, b] for the seeds, no raw JSON, both parameter counts
    assert "mean ± std" in html and re.search(r"\d\.\d{4} ± \d\.\d{4}", html)
    assert not re.search(r"<dd>\{", html) and not re.search(r"\d\.\d{9}", html)
    metrics = json.loads((work / "runs" / "base" / "metrics.json").read_text())
    assert f"<dt>parameters (total)</dt><dd>{number(metrics['parameters'])}</dd>" in html
    assert f"<dt>trainable parameters</dt><dd>{number(metrics['trainable_parameters'])}</dd>" in html
    # no table wider than the page allows: wide ones are split, their first column in each part
    for head in re.findall(r"<thead><tr>(.*?)</tr></thead>", html):
        assert head.count("<th>") <= 8


def test_a_missing_case_image_says_so_and_relative_paths_resolve_from_the_data_folder(trained_run, tmp_path: Path):
    data, _ = trained_run
    bad = tmp_path / "exps" / "bad"
    write_table([{"kind": "x", "count": 1}], bad)
    write_manifest(bad, "badcases", "mmsent badcases ...", data=str(data))
    with (bad / "bad_cases.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "tag", "pred", "confidence", "text", "image_path"])
        writer.writerow(["140", "negative", "positive", "0.62", "relative to the data folder", "data/140.jpg"])
        writer.writerow(["101", "positive", "negative", "0.95", "an old, cwd-relative path", "../elsewhere/data/101.jpg"])
        writer.writerow(["999", "neutral", "positive", "0.70", "gone", "data/999.jpg"])
    out = tmp_path / "r.html"
    assert main(["report", "--runs", str(tmp_path / "exps"), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    cards = case_cards(html)
    assert [re.search(r"guid (\d+)", c).group(1) for c in cards] == ["101", "999", "140"]  # by confidence
    assert "<img" in cards[0] and "<img" in cards[2]  # found by its guid in the data folder; relative to it
    assert "<img" not in cards[1] and "image not found" in cards[1] and str(data / "data" / "999.jpg") in cards[1]
    assert "image not found" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_figure_titles_fit_their_figure_however_narrow(tmp_path: Path, monkeypatch):
    """A one-panel cv figure, one perturbation, a long bad-case title: every title is wrapped inside the canvas."""
    from matplotlib.figure import Figure

    from mmsent.reporting.error_plots import plot_error_rates
    from mmsent.reporting.experiment_plots import plot_cv, plot_robustness

    too_wide: list[str] = []
    save = Figure.savefig

    def checking_savefig(fig, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        titles = [ax.title for ax in fig.axes] + [t for t in [getattr(fig, "_suptitle", None)] if t is not None]
        for title in titles:
            box = title.get_window_extent(renderer)
            if title.get_text() and (box.x0 < 0 or box.x1 > fig.bbox.width):
                too_wide.append(title.get_text())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checking_savefig)
    plot_cv([{"candidate": "a", "macro_f1": 0.5}, {"candidate": "a", "macro_f1": 0.6}], [], ["macro_f1"],
            tmp_path / "cv.png")
    plot_robustness([{"perturbation": "clean", "level": 0, "macro_f1": 0.6, "modality": "-"},
                     {"perturbation": "gaussian_blur_of_the_whole_image", "level": 1, "macro_f1": 0.5,
                      "modality": "image"}], "macro_f1", tmp_path / "robustness.png", clean_se=0.01)
    plot_error_rates([{"bucket": "short", "error_rate": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n": 40}],
                     "error rate by the number of hashtags and mentions in the text of the post", tmp_path / "e.png")
    assert too_wide == []
    assert all((tmp_path / name).stat().st_size > 0 for name in ("cv.png", "robustness.png", "e.png"))
