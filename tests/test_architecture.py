"""The package's shape: imports only run down the layers, and only run_folder.py names a run folder's files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mmsent
from mmsent import run_folder

SRC = Path(mmsent.__file__).parent
# lower layers never import higher ones; a module may import its own layer and below
LAYERS = [
    ("mmsent.reporting.plots", 0), ("mmsent.reporting.experiment_plots", 0), ("mmsent.reporting.error_plots", 0),
    ("mmsent.errors", 0), ("mmsent.distributed", 0), ("mmsent.files", 0), ("mmsent.config", 0), ("mmsent.tables", 0),
    ("mmsent.presets", 0), ("mmsent.stats", 0), ("mmsent.progress", 0), ("mmsent.allocator", 0),
    ("mmsent.data", 1),
    ("mmsent.run_folder", 2), ("mmsent.heldout", 2),
    ("mmsent.encoders", 3), ("mmsent.heads", 3),
    ("mmsent.model", 4), ("mmsent.engine", 4), ("mmsent.factory", 4),
    ("mmsent.api", 5),
    ("mmsent.experiments", 6),
    ("mmsent.reporting", 7), ("mmsent.serve", 7),
    ("mmsent.cli", 8),
]
RUN_FILES = [run_folder.CONFIG_FILE, run_folder.WEIGHTS_FILE, run_folder.SPEC_FILE, run_folder.ENCODERS_FILE,
             run_folder.METRICS_FILE, run_folder.HISTORY_FILE, run_folder.SPLIT_FILE, run_folder.VAL_PREDICTIONS_FILE,
             run_folder.VAL_LIST_FILE,
             run_folder.SKIPPED_FILE, run_folder.MANIFEST_FILE, run_folder.MARKER_FILE, run_folder.ERROR_FILE,
             run_folder.PREDICTIONS_FILE]
# the same names meaning other files
OTHER_FILES = {
    ("encoders/minilm.py", "model.safetensors"): "the Hugging Face model's own weights",
    ("data/shards.py", ".skipped.json"): "the companion of a prediction file written by `mmsent predict`",
    ("data/split_lists.py", "val.txt"): "the validation list of a split folder (`mmsent split`)",
    ("data/releases.py", "val.txt"): "the validation list of a split folder (`mmsent split`)",
    ("cli.py", "val.txt"): "the validation list of a split folder (`mmsent split`)",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module == "mmsent":
        return 0
    matches = [(prefix, rank) for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} has no layer: add it to LAYERS"
    return max(matches, key=lambda m: len(m[0]))[1]


def imported_modules(tree: ast.AST) -> list[str]:
    """Every mmsent module imported anywhere in the file, including inside functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmsent":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "mmsent"]
    return found


def test_no_import_runs_back_up():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        importer = module_name(path)
        for imported in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            if layer(imported) > layer(importer):
                upward.append(f"{importer} (layer {layer(importer)}) imports {imported} (layer {layer(imported)})")
    assert upward == []


def test_run_folder_file_names_appear_in_one_module_only():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "run_folder.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            for name in RUN_FILES:
                if name in node.value and not any(rel == f and other in node.value for f, other in OTHER_FILES):
                    offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_command_line_starts_without_scikit_learn_or_scipy():
    """Every `mmsent` command builds the parser first; with these at the top of a module it started a second later."""
    probe = "import sys; from mmsent.cli import build_parser; build_parser(); print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'matplotlib'}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
