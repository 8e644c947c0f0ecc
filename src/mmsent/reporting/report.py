"""The study report: run and experiment folders -> one self-contained HTML file and a Markdown twin."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mmsent import LABELS, __version__
from mmsent.errors import MmsentError
from mmsent.files import atomic_write_text, check_output_file
from mmsent.run_folder import METRICS_FILE, RunFolder, has_manifest, read_manifest
from mmsent.tables import markdown_table, read_table

# Fixed section order; kinds not listed here come after them, by name.
KIND_ORDER = ["data", "cv", "compare", "search", "variants", "seeds", "robustness", "ablation", "badcases", "retrain",
              "train", "run"]
KIND_TITLES = {
    "data": "Data",
    "cv": "Cross-validation",
    "compare": "Model comparison",
    "search": "Hyper-parameter search",
    "variants": "Variants of the chosen model",
    "seeds": "Seed stability",
    "robustness": "Robustness",
    "ablation": "Ablation",
    "badcases": "Error analysis",
    "retrain": "Retrained final model",
    "train": "Trained model",
    "run": "Final model",
}
KIND_INTROS = {
    "data": "What the data set folder holds, as `mmsent data check` found it: class balance, text encodings, "
    "files no list names, duplicated texts and images, image sizes and unusable files.",
    "cv": "Candidates cross-validated on train.txt with the same folds (duplicate posts kept on one side): the mean "
    "of each score with its 95% interval, and each candidate's paired difference to the first.",
    "compare": "Encoders and fusion heads compared on the same validation split: each row is one trained model.",
    "search": "A hyper-parameter search: each row is one trial, scored on validation macro-F1; the best trial gives "
    "the chosen configuration.",
    "variants": "Variants of one model (preprocessing, augmentation, loss, head), each trained and scored the same way.",
    "seeds": "The same configuration trained with different seeds: the spread says how large a difference between "
    "two models must be before it means anything.",
    "robustness": "Scores when the inputs are perturbed or one modality is missing at prediction time.",
    "ablation": "Parts of the model removed one at a time, to show what each contributes.",
    "badcases": "Posts the model gets wrong, most confident first, with their image and text: where it fails and why.",
    "retrain": "The chosen configuration trained again on more data for the final predictions.",
    "train": "A trained run: its validation metrics, per-class scores, confusion matrix, ROC curves, learning curves "
    "and configuration.",
    "run": "The end-to-end run (train, validate, predict the test list): validation metrics, per-class scores, "
    "confusion matrix, ROC curves, learning curves and configuration.",
}
RUN_FIGURES = [("confusion.png", "Confusion matrix"), ("roc.png", "ROC curves"), ("curves.png", "Learning curves"),
               ("reliability.png", "Reliability diagram")]
MAX_TABLE_ROWS = 60
MAX_BAD_CASES = 8
THUMB_PX = 160


@dataclass
class Figure:
    title: str
    file: str  # path relative to the Markdown file
    data_uri: str  # the same image, embedded for the HTML file


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]]
    total: int  # rows in the source file (only the first MAX_TABLE_ROWS are shown)
    source: str

    def markdown(self) -> str:
        return markdown_table([dict(zip(self.columns, row, strict=True)) for row in self.rows], self.columns)


@dataclass
class BadCase:
    guid: str
    tag: str
    pred: str
    confidence: str
    text: str
    thumb: Figure | None


@dataclass
class Section:
    id: str
    kind: str
    title: str
    intro: str
    source: str
    command: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    bad_cases: list[BadCase] = field(default_factory=list)
    config_yaml: str | None = None
    notes: list[str] = field(default_factory=list)


class Assets:
    """Figures copied beside the Markdown file and base64-encoded for the HTML file."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.used: set[str] = set()

    def add(self, title: str, data: bytes, name: str, mime: str = "image/png") -> Figure:
        stem, suffix = Path(name).stem, Path(name).suffix
        unique, k = f"{stem}{suffix}", 1
        while unique in self.used:
            k += 1
            unique = f"{stem}-{k}{suffix}"
        self.used.add(unique)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / unique).write_bytes(data)
        uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return Figure(title, f"{self.folder.name}/{unique}", uri)

    def add_file(self, title: str, path: Path, prefix: str) -> Figure:
        return self.add(title, path.read_bytes(), f"{prefix}-{path.name}")


# ---- finding folders ----


def is_experiment(folder: Path) -> bool:
    """A run (complete or not: an incomplete one is refused with its reason when read) or an experiment folder."""
    return has_manifest(folder) or RunFolder.looks_like_run(folder)


def find_folders(roots: list[Path], depth: int = 2) -> list[Path]:
    """Run and experiment folders at or below each root (at most `depth` levels); not inside one another."""
    found: list[Path] = []
    seen: set[Path] = set()

    def visit(folder: Path, level: int) -> None:
        key = folder.resolve()
        if key in seen:
            return
        seen.add(key)
        if is_experiment(folder):
            found.append(folder)
            return
        if level < depth:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                visit(child, level + 1)

    for root in roots:
        if not Path(root).is_dir():
            raise MmsentError(f"{root}: no such folder (pass run or experiment folders to --runs)")
        visit(Path(root), 0)
    return found


# ---- reading what a folder holds ----


def fmt(value: object) -> str:
    """Numbers as a reader wants them: floats to 4 decimals, integers as they are."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if abs(value) <= 1:
            return f"{value:.4f}"  # scores and probabilities: aligned columns
        return f"{value:.4f}".rstrip("0").rstrip(".")  # 7.62 s, 191.4 s
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if ("." not in value and "e" not in value.lower()) else fmt(number)
    return str(value)


def csv_table(path: Path, caption: str) -> Table | None:
    rows = read_table(path)
    if not rows:
        return None
    columns = list(rows[0])
    shown = [[fmt(row.get(c, "")) for c in columns] for row in rows[:MAX_TABLE_ROWS]]
    return Table(caption, columns, shown, len(rows), path.name)


def manifest_facts(manifest: dict) -> list[tuple[str, str]]:
    """The manifest's own fields (best trial, seeds, ...), shown as they were written."""
    skip = {"kind", "command", "created", "mmsent_version", "files", "fold_guids"}
    facts = []
    for key, value in manifest.items():
        if key in skip:
            continue
        text = fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value, default=str)
        facts.append((key.replace("_", " "), text if len(text) <= 400 else text[:400] + " ..."))
    return facts


def run_facts(metrics: dict) -> list[tuple[str, str]]:
    names = [
        ("n", "validation examples"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted F1"),
        ("ece", "expected calibration error"),
        ("macro_precision", "macro precision"), ("macro_recall", "macro recall"),
        ("roc_auc_ovr_macro", "ROC AUC (one vs rest, macro)"), ("best_epoch", "best epoch"),
        ("epochs_run", "epochs run"), ("n_train", "training examples"), ("parameters", "trainable parameters"),
        ("encode_seconds", "encoding time (s)"), ("train_seconds", "training time (s)"),
    ]
    return [(label, fmt(metrics[key])) for key, label in names if key in metrics]


def per_class_table(metrics: dict) -> Table | None:
    per_class = metrics.get("per_class")
    if not per_class:
        return None
    columns = ["class", "precision", "recall", "f1", "support"]
    rows = [[lab] + [fmt(per_class[lab][c]) for c in columns[1:]] for lab in LABELS if lab in per_class]
    return Table("Per-class scores on the validation split", columns, rows, len(rows), METRICS_FILE)


def chosen_config(run: RunFolder) -> str:
    """The model and training sections of the run's config: the configuration that was chosen."""
    cfg = yaml.safe_load(run.config_text()) or {}
    keep = {k: cfg[k] for k in ("model", "train", "text", "image") if k in cfg}
    return yaml.safe_dump(keep or cfg, sort_keys=False).strip()


def thumbnail(path: Path, assets: Assets, name: str) -> Figure | None:
    from mmsent.data.images import ImageReadError, open_image

    try:
        img = open_image(path, draft_size=THUMB_PX)
    except ImageReadError:
        return None
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return assets.add(name, buf.getvalue(), f"thumb-{name}.jpg", "image/jpeg")


def bad_cases(folder: Path, assets: Assets) -> list[BadCase]:
    rows = read_table(folder / "bad_cases.csv")[:MAX_BAD_CASES]
    cases = []
    for row in rows:
        image = Path(row.get("image_path") or "")
        if row.get("image_path") and not image.is_absolute():
            image = folder / image
        thumb = thumbnail(image, assets, row.get("guid", "case")) if row.get("image_path") else None
        cases.append(BadCase(row.get("guid", ""), row.get("tag", ""), row.get("pred", ""),
                             fmt(row.get("confidence", "")), row.get("text", ""), thumb))
    return cases


def folder_section(folder: Path, assets: Assets, index: int) -> Section:
    """Everything a run or experiment folder holds, handled the same way for every kind."""
    manifest = read_manifest(folder) or {}
    kind = str(manifest.get("kind") or "train")
    title = KIND_TITLES.get(kind, kind.replace("_", " ").capitalize())
    section = Section(
        id=f"{kind}-{index}", kind=kind, title=f"{title}: {folder.name}", intro=KIND_INTROS.get(kind, ""),
        source=str(folder), command=manifest.get("command"),
    )
    section.facts = manifest_facts(manifest)
    prefix = f"{index:02d}-{kind}"
    if (folder / "results.csv").is_file():
        table = csv_table(folder / "results.csv", "Results")
        if table:
            section.tables.append(table)
    elif (folder / "results.md").is_file():
        section.notes.append((folder / "results.md").read_text(encoding="utf-8"))
    for png in sorted(folder.glob("*.png")):
        section.figures.append(assets.add_file(png.stem.replace("_", " "), png, prefix))
    if (folder / "bad_cases.csv").is_file():
        section.bad_cases = bad_cases(folder, assets)
    if RunFolder.looks_like_run(folder):
        run = RunFolder.open(folder)  # an incomplete or damaged run stops the report with its reason
        metrics = run.metrics()
        section.facts = run_facts(metrics) + section.facts
        table = per_class_table(metrics)
        if table:
            section.tables.append(table)
        for name, caption in RUN_FIGURES:
            if (plot := run.plot(name)) is not None:
                section.figures.append(assets.add_file(caption, plot, prefix))
        section.config_yaml = chosen_config(run)
    return section


def data_section(path: Path, assets: Assets) -> Section:
    """The data report of `mmsent data check` (its JSON file)."""
    from mmsent.reporting.plots import plot_class_counts

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MmsentError(f"{path}: cannot read the data report ({exc}); write one with `mmsent data check --out`") from None
    counts = report["counts"]
    section = Section(id="data", kind="data", title=KIND_TITLES["data"], intro=KIND_INTROS["data"], source=str(path),
                      command=f"mmsent data check --data {report.get('data_dir', 'DATA')}")
    train = counts["train"]
    section.tables.append(Table("Labelled posts (train.txt) per class", ["class", "posts", "share"],
                                [[lab, str(train[lab]), f"{train[lab] / max(train['total'], 1):.1%}"] for lab in LABELS]
                                + [["total", str(train["total"]), "100.0%"]], 4, path.name))
    section.facts = [
        ("unlabelled posts (test list)", str(counts["test"]["total"])),
        ("texts decoded with the GB18030 fallback", str(report["gb18030_fallback"]["count"])),
        ("redundant files (guids in neither list)", f"{report['redundant_files']['files']} files of "
                                                    f"{report['redundant_files']['guids']} guids"),
    ]
    for key in ("duplicate_texts", "duplicate_images"):
        d = report[key]
        section.facts.append((key.replace("_", " "), f"{d['groups']} groups over {d['guids_in_groups']} posts; "
                              f"{d['crossing_train_test']} cross train/test, {d['with_conflicting_labels']} with conflicting labels"))
    size = report.get("image_size", {})
    if size.get("width"):
        section.facts.append(("image width (px)", _stats_line(size["width"])))
        section.facts.append(("image height (px)", _stats_line(size["height"])))
        section.facts.append(("image file size (KB)", _stats_line(size["file_kb"])))
    section.facts.append(("problems", str(len(report["problems"]))))
    section.notes += report["problems"][:10]
    buf = io.BytesIO()
    plot_class_counts({lab: train[lab] for lab in LABELS}, buf)
    section.figures.append(assets.add("Class balance", buf.getvalue(), "data-class-balance.png"))
    return section


def _stats_line(stats: dict) -> str:
    return f"median {stats['median']:.0f} (min {stats['min']:.0f}, max {stats['max']:.0f})"


def order_key(section: Section) -> tuple[int, str]:
    rank = KIND_ORDER.index(section.kind) if section.kind in KIND_ORDER else len(KIND_ORDER)
    return rank, section.kind


# ---- rendering ----


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("mmsent.reporting", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def build_report(roots: list[Path], out: Path, data_report: Path | None = None) -> tuple[Path, Path, list[str]]:
    """Write out (HTML) and its Markdown twin beside it; return both paths and the section titles."""
    out = check_output_file(Path(out), "the report")
    assets_dir = out.parent / f"{out.stem}_figures"
    if assets_dir.exists():
        shutil.rmtree(assets_dir)  # figures of an older report must not linger beside the new one
    assets = Assets(assets_dir)
    sections = []
    if data_report is not None:
        sections.append(data_section(Path(data_report), assets))
    folders = find_folders([Path(r) for r in roots])
    if not folders and not sections:
        raise MmsentError(f"no run or experiment folder found in {', '.join(map(str, roots))} "
                          "(a run folder written by `mmsent train`, or an experiment folder)")
    sections += [folder_section(f, assets, i) for i, f in enumerate(folders, start=1)]
    sections.sort(key=order_key)
    context = {
        "sections": sections,
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "version": __version__,
        "sources": [str(r) for r in roots] + ([str(data_report)] if data_report else []),
    }
    env = environment()
    atomic_write_text(out, env.get_template("report.html.j2").render(**context))
    md_path = out.with_suffix(".md")
    atomic_write_text(md_path, env.get_template("report.md.j2").render(**context))
    return out, md_path, [s.title for s in sections]
