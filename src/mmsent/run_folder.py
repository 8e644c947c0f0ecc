"""The one owner of run and experiment folders: file names, atomic publication, completion marker, lock, reads.

A run is written into a private folder beside its target (`.NAME.partial-*`) and published in one
atomic step once every file is there, the completion marker (`complete.json`, with each file's size
and SHA-256) last. Readers refuse a folder without the marker, or with a file that differs from it,
so a run killed half-way or mixed from two writers is never used. A writer holds an OS lock on
`.NAME.lock` beside the target: a second writer of the same folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mmsent import __version__, distributed
from mmsent.config import Config, config_from_text, config_yaml
from mmsent.data.labels import label_file_text
from mmsent.errors import FollowerError, MmsentError
from mmsent.files import (
    FileLock,
    atomic_write_text,
    ensure_writable_folder,
    exchange_paths,
    remove_tree,
)
from mmsent.tables import csv_text

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
ENCODERS_FILE = "encoders.safetensors"
EXPORTS_FILE = "exports.json"  # {encoder: {"key": ..., "file": "exports/NAME.onnx"}}: verified ONNX exports
EXPORTS_DIR = "exports"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
SPLIT_FILE = "split.json"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
VAL_LIST_FILE = "val.txt"  # the validation split as a `guid,tag` label list
SKIPPED_FILE = "skipped.json"
PREDICTIONS_FILE = "predictions.txt"
PLOTS_DIR = "plots"
MANIFEST_FILE = "experiment.json"
MARKER_FILE = "complete.json"
ERROR_FILE = "error.txt"
# files whose presence says "a run was (being) written here", for telling an incomplete run from any folder
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, SPEC_FILE, METRICS_FILE, SPLIT_FILE, MARKER_FILE)


class RunChanged(MmsentError):
    """The run folder was replaced by a newer run while it was being read."""


@dataclass
class Split:
    """The guids a run trained on (original and augmented copies) and validated on."""

    train: list[str]
    val: list[str]
    augmented: list[str] = field(default_factory=list)


@dataclass
class RunOrigin:
    """How a run was asked for: the command line and the preset, recorded in its manifest."""

    command: str | None = None
    preset: str | None = None
    kind: str = "train"
    facts: dict[str, Any] = field(default_factory=dict)  # more for the manifest (a search trial's parameters, say)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file read in blocks (an ONNX export is ~100 MB: not held in memory at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _redo_hint(path: Path) -> str:
    return f"train it again with `mmsent train --data DATA --out {path} --overwrite` (or `mmsent run ... --overwrite`)"


# ---- reading ----


class RunFolder:
    """A complete, published run: typed access to its files, each checked against the completion marker."""

    def __init__(self, path: Path, marker: dict[str, Any]):
        self.path = Path(path)
        self.marker = marker

    @property
    def run_id(self) -> str:
        return str(self.marker.get("run_id", ""))

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (Path(path) / MARKER_FILE).is_file()

    @staticmethod
    def looks_like_run(path: Path) -> bool:
        """A complete run, or a folder a run was (being) written into."""
        return any((Path(path) / name).exists() for name in RUN_FILES)

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """The run at path, or a clear error: missing, not a run, incomplete, or damaged."""
        path = Path(path)
        if not path.exists():
            raise MmsentError(f"{path}: no such run folder (train one with `mmsent train --data DATA --out {path}`)")
        if not path.is_dir():
            raise MmsentError(f"{path} is a file, not a run folder")
        marker = _read_marker(path)
        folder = cls(path, marker)
        for name, entry in marker.get("files", {}).items():
            file = path / name
            size = file.stat().st_size if file.is_file() else None
            if size != entry["size"]:
                folder._changed_or_damaged(name, "is missing" if size is None else f"has {size:,} bytes where the run recorded {entry['size']:,}")
        return folder

    def _changed_or_damaged(self, name: str, what: str) -> NoReturn:
        """Raise RunChanged if a newer run replaced this one meanwhile, else say the file is damaged."""
        try:
            current = json.loads((self.path / MARKER_FILE).read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError):
            current = None
        if current != self.run_id:
            raise RunChanged(f"{self.path} was replaced by another run while it was read; run the command again")
        raise MmsentError(f"{self.path / name} {what}: the run is damaged; {_redo_hint(self.path)}")

    def read_bytes(self, name: str) -> bytes:
        """A file of the run, verified against the digest the marker recorded."""
        try:
            data = (self.path / name).read_bytes()
        except FileNotFoundError:
            self._changed_or_damaged(name, "is missing")
        self._check_digest(name, _sha256(data))
        return data

    def _check_digest(self, name: str, digest: str) -> None:
        """Refuse a file whose SHA-256 differs from the one the marker recorded (if it recorded the file)."""
        entry = self.marker.get("files", {}).get(name)
        if entry is not None and digest != entry["sha256"]:
            self._changed_or_damaged(name, "differs from what the run recorded (its SHA-256 does not match)")

    def verified_file(self, name: str) -> Path:
        """The path of a file of the run, its content checked against the marker (for files read by path)."""
        path = self.path / name
        if not self.has(name):
            raise MmsentError(f"{path} is not a file of the run; {_redo_hint(self.path)}")
        try:
            digest = _file_sha256(path)
        except FileNotFoundError:
            self._changed_or_damaged(name, "is missing")
        self._check_digest(name, digest)
        return path

    def exports(self) -> dict[str, dict[str, str]]:
        """{encoder: {"key", "file"}} of the verified ONNX exports the run carries (none for older runs)."""
        return self.read_json(EXPORTS_FILE) if self.has(EXPORTS_FILE) else {}

    def has(self, name: str) -> bool:
        return name in self.marker.get("files", {})

    def read_json(self, name: str) -> Any:
        data = self.read_bytes(name)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MmsentError(f"{self.path / name} is not valid JSON ({exc}); {_redo_hint(self.path)}") from None

    def config(self) -> Config:
        text = self.read_bytes(CONFIG_FILE).decode("utf-8")  # the verified bytes are the ones parsed
        return config_from_text(text, str(self.path / CONFIG_FILE))

    def spec(self) -> dict[str, Any]:
        """What rebuilding the classifier needs besides its weights (encoder dims, modalities, fitted state)."""
        spec = self.read_json(SPEC_FILE)
        if not isinstance(spec, dict) or "encoder_dims" not in spec:
            raise MmsentError(f"{self.path / SPEC_FILE} lacks the model description; {_redo_hint(self.path)}")
        return spec

    def _tensors(self, name: str) -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(self.read_bytes(name))
        except SafetensorError as exc:
            raise MmsentError(f"{self.path / name} cannot be read ({exc}); {_redo_hint(self.path)}") from None

    def classifier_state(self) -> dict:
        """The fusion classifier's tensors (scaler and head)."""
        return self._tensors(WEIGHTS_FILE)

    def encoder_weights(self) -> dict | None:
        """Fine-tuned encoder tensors as {"{encoder}.{parameter}": tensor}, or None for a frozen run."""
        return self._tensors(ENCODERS_FILE) if self.has(ENCODERS_FILE) else None

    def encoder_weights_digest(self) -> str | None:
        """Identifies fine-tuned encoder weights (their features are cached under it)."""
        entry = self.marker.get("files", {}).get(ENCODERS_FILE)
        return entry["sha256"][:16] if entry else None

    def metrics(self) -> dict[str, Any]:
        return self.read_json(METRICS_FILE)

    def split(self) -> Split:
        raw = self.read_json(SPLIT_FILE)
        return Split(list(raw["train"]), list(raw["val"]), list(raw.get("augmented", [])))

    def history(self) -> list[dict[str, float]]:
        import csv
        import io

        text = self.read_bytes(HISTORY_FILE).decode("utf-8")
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]

    def manifest(self) -> dict[str, Any]:
        return self.read_json(MANIFEST_FILE) if self.has(MANIFEST_FILE) else {}

    @property
    def preset(self) -> str | None:
        """The preset the run was trained from, as its manifest recorded it."""
        value = self.manifest().get("preset")
        return str(value) if value else None

    def config_text(self) -> str:
        return self.read_bytes(CONFIG_FILE).decode("utf-8")

    @property
    def data_dir(self) -> Path | None:
        """The data set folder the run was trained on, as its manifest recorded it (absolute)."""
        value = self.manifest().get("data")
        return Path(value) if value else None

    def val_prediction_rows(self) -> list[dict[str, str]]:
        """guid, tag, pred and each class probability of the validation posts, verified against the marker."""
        import csv
        import io

        text = self.read_bytes(VAL_PREDICTIONS_FILE).decode("utf-8")
        return list(csv.DictReader(io.StringIO(text)))

    @property
    def val_list(self) -> Path | None:
        """The validation split as a `guid,tag` file (runs written before it existed have none)."""
        return self.path / VAL_LIST_FILE if self.has(VAL_LIST_FILE) else None

    def plot(self, name: str) -> Path | None:
        path = self.path / PLOTS_DIR / name
        return path if path.is_file() else None

    @property
    def val_predictions(self) -> Path:
        return self.path / VAL_PREDICTIONS_FILE

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS_FILE


def _read_marker(path: Path) -> dict[str, Any]:
    marker_path = path / MARKER_FILE
    if not marker_path.is_file():
        if RunFolder.looks_like_run(path):
            raise MmsentError(
                f"{path} is an incomplete run: it has no completion marker ({MARKER_FILE}), so its training was "
                f"interrupted, or it was written by an older mmsent; {_redo_hint(path)}"
            )
        raise MmsentError(f"{path} is not a trained run folder (train one with `mmsent train --data DATA --out {path}`)")
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
            raise ValueError("not a mapping with files")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MmsentError(f"{marker_path} is damaged ({exc}); {_redo_hint(path)}") from None
    return marker


# ---- writing ----


def encoder_weights_blob(encoders: dict) -> tuple[bytes, str]:
    """Fine-tuned encoder weights as safetensors bytes of `{encoder}.{parameter}` tensors, and their digest.

    The digest keys the feature cache of the tuned encoders (their features are not the named weights'
    any more); it is the same digest a reader finds for the saved file.
    """
    from safetensors.torch import save

    tensors = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name, encoder in encoders.items()
        for key, value in encoder.state_dict().items()
    }
    blob = save(tensors, metadata={"mmsent_version": __version__})
    return blob, _sha256(blob)[:16]


class RunWriter:
    """Writes one run's files into a private folder; `create_run` publishes it when all went well."""

    def __init__(self, path: Path, target: Path):
        self.path = path  # the private folder being written
        self.target = target  # where the run is published

    def _write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        atomic_write_text(path, text)
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        return self._write_text(name, json.dumps(obj, indent=2, default=str))

    def write_config(self, cfg: Config) -> None:
        self._write_text(CONFIG_FILE, config_yaml(cfg))

    def write_classifier(self, state: dict, spec: dict[str, Any]) -> None:
        """The classifier's tensors (safetensors) and what rebuilding it needs (model.json)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(self.path / WEIGHTS_FILE), metadata={"mmsent_version": __version__})
        self.write_json(SPEC_FILE, {"mmsent_version": __version__, **spec})

    def write_encoder_weights(self, blob: bytes) -> None:
        """Fine-tuned encoder weights, as `encoder_weights_blob` serialised them."""
        (self.path / ENCODERS_FILE).write_bytes(blob)

    def write_exports(self, exports: dict[str, tuple[str, Path]]) -> None:
        """Verified ONNX exports {encoder: (export key, file)}: hard links to the cached files where the file
        system allows (no space taken), copies elsewhere."""
        import shutil

        entries = {}
        for name, (key, source) in exports.items():
            relative = f"{EXPORTS_DIR}/{name}.onnx"
            target = self.path / relative
            target.parent.mkdir(exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(source, target)
            entries[name] = {"key": key, "file": relative}
        if entries:
            self.write_json(EXPORTS_FILE, entries)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.write_json(METRICS_FILE, metrics)

    def write_split(self, split: Split) -> None:
        self.write_json(SPLIT_FILE, asdict(split))

    def write_skipped(self, rows: list[dict[str, Any]]) -> None:
        self.write_json(SKIPPED_FILE, rows)

    def write_history(self, history: list[dict]) -> None:
        self._write_text(HISTORY_FILE, csv_text(history))

    def write_val_predictions(self, rows: list[dict]) -> None:
        self._write_text(VAL_PREDICTIONS_FILE, csv_text(rows))

    def write_val_list(self, rows: list[tuple[str, str]]) -> None:
        """The validation split as `guid,tag`: a label file for `mmsent evaluate --labels`."""
        self._write_text(VAL_LIST_FILE, label_file_text(rows))

    def write_predictions(self, rows: list[tuple[str, str]]) -> Path:
        return self._write_text(PREDICTIONS_FILE, label_file_text(rows))

    def write_manifest(self, origin: RunOrigin, **extra: Any) -> None:
        write_manifest(self.path, origin.kind, origin.command or "", preset=origin.preset, **origin.facts, **extra)

    def update_manifest(self, **extra: Any) -> None:
        """Add facts to the manifest written so far (by an experiment that wraps a training)."""
        manifest = read_manifest(self.path) or {}
        self.write_json(MANIFEST_FILE, {**manifest, **extra})

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS_DIR

    @property
    def predictions(self) -> Path:
        """Where the run's predictions will be once it is published."""
        return predictions_path(self.target)

    def _write_marker(self) -> None:
        files = {}
        for file in sorted(p for p in self.path.rglob("*") if p.is_file() and p.name != MARKER_FILE):
            files[file.relative_to(self.path).as_posix()] = {"size": file.stat().st_size, "sha256": _file_sha256(file)}
        marker = {"run_id": uuid.uuid4().hex, "completed": _now(), "mmsent_version": __version__, "files": files}
        self._write_text(MARKER_FILE, json.dumps(marker, indent=2))

    def publish(self) -> None:
        """The marker last, then one atomic swap (or rename) puts the complete run at its target."""
        self._write_marker()
        if self.target.exists() and not exchange_paths(self.path, self.target):
            # no atomic exchange on this system: move the old run aside first (recovered by the next writer)
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
            os.rename(self.path, self.target)
            remove_tree(old)
        elif not self.target.exists():
            os.rename(self.path, self.target)
        _sync_folder(self.target.parent)


def predictions_path(run_dir: Path) -> Path:
    """Where a run's predictions of the test list are (`mmsent run`)."""
    return Path(run_dir) / PREDICTIONS_FILE


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (a power cut after it keeps it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_run_target(target: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that would lose something: a file, another folder, a run without --overwrite."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise MmsentError(f"--out {target} is a file; give a folder path for the run")
    if not target.is_dir() or {p.name for p in target.iterdir()} <= {ERROR_FILE}:
        return  # nothing there, or only the note of an attempt that failed
    if RunFolder.is_complete(target):
        if not overwrite:
            raise MmsentError(
                f"{target} already holds a trained run; pass --overwrite to replace it (the old run stays intact until "
                "the new one is complete), or choose another --out"
            )
        return
    if RunFolder.looks_like_run(target):
        if not overwrite:
            raise MmsentError(
                f"{target} holds an incomplete run (no completion marker: an interrupted training, or an older mmsent); "
                "pass --overwrite to replace it, or choose another --out"
            )
        return
    shown = ", ".join(sorted(p.name for p in target.iterdir())[:5])
    raise MmsentError(f"{target} is a folder that is not a run (it holds {shown}); choose another --out")


def _recover(target: Path) -> None:
    """Under the lock: finish a publication interrupted between its two renames, and drop stale private folders."""
    parent, name = target.parent, target.name
    partials = sorted(parent.glob(f".{name}.partial-*"))
    olds = sorted(parent.glob(f".{name}.old-*"))
    if not target.exists() and olds:
        complete_new = [p for p in partials if RunFolder.is_complete(p)]
        os.rename(complete_new[-1] if complete_new else olds[-1], target)
    for leftover in partials + olds:
        remove_tree(leftover)  # only a writer holding the lock writes these: any found now is stale


def _sweep_siblings(parent: Path, own: str) -> None:
    """Recover the other runs of this folder whose writer was killed (their lock is free), so no private folder lingers."""
    names = {p.name.split(".partial-")[0][1:] for p in parent.glob(".*.partial-*")}
    names |= {p.name.split(".old-")[0][1:] for p in parent.glob(".*.old-*")}
    for name in sorted(names - {own}):
        try:
            with FileLock(parent / f".{name}.lock", f"the run folder {parent / name}"):
                _recover(parent / name)
        except MmsentError:
            continue  # being written right now: its writer owns those files


@contextmanager
def create_run(target: Path, overwrite: bool = False) -> Iterator[RunWriter]:
    """Lock target, write the run privately, publish it complete on success; on any failure nothing changes."""
    target = Path(target)
    check_run_target(target, overwrite)  # a clear refusal before the lock and any work
    parent = ensure_writable_folder(target.parent, f"the run folder {target}")
    with FileLock(parent / f".{target.name}.lock", f"the run folder {target}"):
        _recover(target)
        _sweep_siblings(parent, target.name)
        check_run_target(target, overwrite)  # again: another writer may have published meanwhile
        private = parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        private.mkdir()
        try:
            writer = RunWriter(private, target)
            yield writer
            writer.publish()
        finally:
            remove_tree(private)  # after an exchange it holds the old run; after a failure, the partial one


@contextmanager
def create_run_once(target: Path, overwrite: bool = False) -> Iterator[RunWriter | None]:
    """create_run for a command that may run in several processes: the main one writes, the others get None.

    Under `accelerate launch` / `torchrun` every process runs the same command. Only the main process
    takes the lock, writes the private folder and publishes it; the others never create a file here.
    They learn whether it could take the folder (an existing run without --overwrite, a held lock) and
    stop with its message if not, and at the end they wait until it has published the run or failed to.
    """
    if not distributed.launched():
        with create_run(target, overwrite) as writer:
            yield writer
    elif distributed.is_main_process():
        with _create_run_and_tell(target, overwrite) as writer:
            yield writer
    else:
        _follow(distributed.broadcast_from_main(None))  # the folder is taken, or why not
        yield None
        _follow(distributed.broadcast_from_main(None))  # the run is published, or why not


@contextmanager
def _create_run_and_tell(target: Path, overwrite: bool) -> Iterator[RunWriter]:
    """The main process's create_run, telling the other processes whether taking and publishing the folder worked.

    A failure of the work in between is not told: the others are then inside the same work, and the
    launcher ends them when this process exits with an error.
    """
    with ExitStack() as stack:
        try:
            writer = stack.enter_context(create_run(target, overwrite))
        except (MmsentError, OSError) as exc:
            distributed.broadcast_from_main(str(exc))
            raise
        distributed.broadcast_from_main(None)
        yield writer
        try:
            stack.close()  # publishes
        except (MmsentError, OSError) as exc:
            distributed.broadcast_from_main(str(exc))
            raise
    distributed.broadcast_from_main(None)


def _follow(failure: str | None) -> None:
    """Stop a follower process with the main process's failure (which the main process reports)."""
    if failure is not None:
        raise FollowerError(failure)


# ---- experiment folders ----


def write_manifest(out_dir: Path, kind: str, command: str, **extra: Any) -> Path:
    """experiment.json: what kind of experiment or run, the command that made it, when, and its facts."""
    manifest = {"kind": kind, "command": command, "created": _now(), "mmsent_version": __version__, **extra}
    path = Path(out_dir) / MANIFEST_FILE
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))
    return path


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MmsentError(f"{path} cannot be read ({exc}); run the command that made {folder} again") from None


def has_manifest(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


@contextmanager
def experiment_folder(out_dir: Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Hold the lock of an experiment folder while it is written; a finished one is kept unless overwrite.

    An experiment writes its runs (each published atomically) and then its tables; its manifest comes
    last, so a folder with a manifest is a finished experiment.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MmsentError(f"--out {out_dir} is a file; give a folder path for the {kind} experiment")
    parent = ensure_writable_folder(out_dir.parent, f"the {kind} folder {out_dir}")
    with FileLock(parent / f".{out_dir.name}.lock", f"the {kind} folder {out_dir}"):
        if has_manifest(out_dir) and not overwrite:
            raise MmsentError(
                f"{out_dir} already holds a finished {read_manifest(out_dir).get('kind', kind)} experiment; pass "
                "--overwrite to redo it, or choose another --out"
            )
        ensure_writable_folder(out_dir, f"the {kind} folder")
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # unfinished until the new manifest is written
        yield out_dir


def write_error(folder: Path, message: str) -> Path:
    """error.txt: why a run of an experiment could not be made (its full message)."""
    path = Path(folder) / ERROR_FILE
    atomic_write_text(path, message + "\n")
    return path
