"""The study report: sections from run and experiment folders, embedded figures, no network, a Markdown twin."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from PIL import Image

from mmsent.cli import main
from mmsent.data.check import check_dataset
from mmsent.run_folder import write_manifest
from mmsent.tables import write_table


def figure(path: Path, colour=(200, 60, 60)) -> None:
    Image.new("RGB", (40, 30), colour).save(path, format="PNG")


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
