"""The README cannot drift silently: every measured number sits beside the command that produced it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# a measured score or time as the README writes them: four decimals (0.6474); settings (C=0.001) are not
MEASURED = re.compile(r"(?<![\w.])\d+\.\d{4}(?![\w.])")
COMMAND = re.compile(r"`(?:mmsent|make|python|PYTHONPATH=\S+ python)\b[^`]*`")
# paragraphs whose numbers another change regenerates with their commands (issue 10); each must still be
# in the README, so that the entry is removed with the paragraph
PENDING: tuple[str, ...] = ()


def blocks(text: str) -> list[str]:
    """Paragraphs, tables and list items, without fenced code (commands themselves)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    parts = []
    for block in re.split(r"\n\s*\n", text):
        parts += [item for item in re.split(r"\n(?=- )", block) if item.strip()]
    return parts


def _introduced_by_command(parts: list[str], i: int) -> bool:
    """Whether the table parts[i] follows a block with a command, possibly through other tables (a split table)."""
    j = i - 1
    while j >= 0 and parts[j].lstrip().startswith("|"):
        j -= 1
    return j >= 0 and bool(COMMAND.search(parts[j]))


def unsourced(text: str) -> list[str]:
    """Blocks with a measured number and no command in them (a table's command may be in the block before)."""
    found, parts = [], blocks(text)
    for i, block in enumerate(parts):
        if not MEASURED.search(block) or COMMAND.search(block) or block.startswith(PENDING):
            continue
        if block.lstrip().startswith("|") and _introduced_by_command(parts, i):
            continue
        found.append(block)
    return found


def test_every_readme_number_has_its_command():
    problems = unsourced(README.read_text(encoding="utf-8"))
    assert not problems, "README numbers without the command that produced them:\n\n" + "\n\n".join(problems)


def test_pending_paragraphs_are_still_there():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert all(p in text for p in PENDING), "a paragraph of PENDING is gone from the README: remove its entry"


def test_the_check_finds_a_number_without_a_command():
    text = "Intro.\n\nThe model reaches 0.6474 macro-F1.\n\n`mmsent cv --out x` gives 0.6012.\n\n" \
           "`mmsent compare --out y`:\n\n| a | b |\n|---|---|\n| x | 0.7139 |\n\n| a | c |\n|---|---|\n| x | 0.2 |\n\n" \
           "Between.\n\n| c |\n|---|\n| 0.5000 |\n"
    assert unsourced(text) == ["The model reaches 0.6474 macro-F1.", "| c |\n|---|\n| 0.5000 |\n"]


def test_readme_results_prints_each_table_with_its_command(tmp_path: Path):
    """What benchmarks/readme_results.py prints passes the check above: a command, then its table."""
    import importlib.util

    from mmsent.run_folder import write_manifest
    from mmsent.tables import write_table

    spec = importlib.util.spec_from_file_location("readme_results", README.parent / "benchmarks" / "readme_results.py")
    readme_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_results)
    folder = tmp_path / "variants"
    write_table([{"variant": "base", "overrides": "(base)", "accuracy": 0.71391, "macro_f1": 0.647412,
                  "vs_reference": "reference", "train_seconds": 6.52},
                 {"variant": "wide", "overrides": "model.hidden_dim=512", "accuracy": 0.7, "macro_f1": 0.631,
                  "delta_macro_f1": -0.016412, "delta_macro_f1_ci": "[-0.0400, +0.0080]",
                  "vs_reference": "within noise", "train_seconds": 7.1}], folder)
    write_manifest(folder, "variants", "mmsent variants --data d --out runs/v --variants v.yaml")
    text = readme_results.experiment_table(folder)
    assert text.startswith("`mmsent variants --data d --out runs/v --variants v.yaml`")
    assert "| wide | model.hidden_dim=512 | 0.7000 | 0.6310 | -0.0164 | [-0.0400, +0.0080] | within noise |" in text
    assert MEASURED.search(text) and unsourced(text) == []
