"""The run folder: complete-or-absent publication, the lock, --overwrite, refusals of incomplete or damaged runs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from mmsent import files
from mmsent.cli import main
from mmsent.config import Config
from mmsent.errors import MmsentError
from mmsent.files import FileLock
from mmsent.run_folder import MARKER_FILE, RunFolder, RunOrigin, Split, create_run


def write_small_run(target: Path, overwrite: bool = False, fail: bool = False, tag: str = "a") -> None:
    """A run of a few files through the writer (no training): enough to test the folder's rules."""
    with create_run(target, overwrite) as writer:
        writer.write_config(Config())
        writer.write_metrics({"accuracy": 0.5, "tag": tag})
        writer.write_split(Split(["1", "2"], ["3"]))
        writer.write_manifest(RunOrigin("mmsent train ...", preset="default"))
        if fail:
            raise RuntimeError("killed half-way")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_a_run_is_published_complete_with_its_marker(tmp_path: Path):
    write_small_run(tmp_path / "run")
    run = RunFolder.open(tmp_path / "run")
    assert run.metrics()["tag"] == "a" and run.split().val == ["3"] and run.preset == "default"
    marker = json.loads((tmp_path / "run" / MARKER_FILE).read_text())
    assert set(marker["files"]) >= {"config.yaml", "metrics.json", "split.json", "experiment.json"}
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path):
    with pytest.raises(RuntimeError):
        write_small_run(tmp_path / "run", fail=True)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


def test_an_existing_run_needs_overwrite_and_survives_a_failed_replacement(tmp_path: Path):
    write_small_run(tmp_path / "run", tag="old")
    with pytest.raises(MmsentError, match="already holds a trained run; pass --overwrite"):
        write_small_run(tmp_path / "run", tag="new")
    with pytest.raises(RuntimeError):
        write_small_run(tmp_path / "run", overwrite=True, fail=True, tag="new")
    assert RunFolder.open(tmp_path / "run").metrics()["tag"] == "old"  # intact
    write_small_run(tmp_path / "run", overwrite=True, tag="new")
    assert RunFolder.open(tmp_path / "run").metrics()["tag"] == "new" and leftovers(tmp_path) == []


def test_publication_without_an_atomic_exchange_and_its_recovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("mmsent.run_folder.exchange_paths", lambda a, b: False)
    write_small_run(tmp_path / "run", tag="old")
    write_small_run(tmp_path / "run", overwrite=True, tag="new")
    assert RunFolder.open(tmp_path / "run").metrics()["tag"] == "new"
    # a kill between the two renames: the old run moved aside, the new one complete but not yet in place
    write_small_run(tmp_path / "other", tag="newest")
    os.rename(tmp_path / "run", tmp_path / ".run.old-1234")
    os.rename(tmp_path / "other", tmp_path / ".run.partial-5678")
    with pytest.raises(MmsentError, match="already holds"):
        write_small_run(tmp_path / "run")  # the next writer of "run" finishes the interrupted publication first
    assert RunFolder.open(tmp_path / "run").metrics()["tag"] == "newest" and leftovers(tmp_path) == []


def test_writers_sweep_what_killed_writers_left_but_not_what_live_ones_write(tmp_path: Path):
    (tmp_path / ".killed.partial-1234").mkdir()
    (tmp_path / ".busy.partial-5678").mkdir()
    with FileLock(tmp_path / ".busy.lock", "busy"):  # a live writer of "busy"
        write_small_run(tmp_path / "other")
        assert leftovers(tmp_path) == [".busy.partial-5678"]


def test_a_second_writer_is_refused_while_the_lock_is_held(tmp_path: Path, dataset: Path, capsys):
    with FileLock(tmp_path / ".run.lock", "the run folder"):
        code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "another mmsent process" in err and "is writing" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_readers_refuse_incomplete_and_damaged_runs(trained_run, tmp_path: Path, capsys):
    data, run = trained_run

    def predict(folder: Path) -> tuple[int, str]:
        code = main(["predict", "--run", str(folder), "--data", str(data), "--guids",
                     str(data / "test_without_label.txt"), "--out", str(tmp_path / "p.txt"), "--quiet"])
        return code, capsys.readouterr().err

    no_marker = tmp_path / "no_marker"
    shutil.copytree(run, no_marker)
    (no_marker / MARKER_FILE).unlink()
    code, err = predict(no_marker)
    assert code == 2 and "incomplete run" in err and "--overwrite" in err

    truncated = tmp_path / "truncated"
    shutil.copytree(run, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = predict(truncated)
    assert code == 2 and "model.safetensors" in err and "damaged" in err and "Traceback" not in err

    empty_spec = tmp_path / "empty_spec"
    shutil.copytree(run, empty_spec)
    (empty_spec / "model.json").write_text("")
    code, err = predict(empty_spec)
    assert code == 2 and "model.json" in err and "damaged" in err

    same_size = tmp_path / "same_size"
    shutil.copytree(run, same_size)
    config = (same_size / "config.yaml").read_text()
    (same_size / "config.yaml").write_text(config.replace("epochs: 15", "epochs: 16"))
    code, err = predict(same_size)
    assert code == 2 and "config.yaml differs from what the run recorded" in err
    assert not (tmp_path / "p.txt").exists()


def test_a_run_replaced_while_it_is_read_is_read_again(trained_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mmsent import api

    _, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    real_open, calls = RunFolder.open, []

    def open_then_replace(path):
        folder = real_open(path)
        calls.append(path)
        if len(calls) == 1:  # a newer run is published right after the first reader opened the folder
            marker = json.loads((copy / MARKER_FILE).read_text())
            marker["run_id"] = "newer"
            (copy / MARKER_FILE).write_text(json.dumps(marker))
            (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "\n")
            marker["files"]["config.yaml"] = {"size": (copy / "config.yaml").stat().st_size,
                                              "sha256": files_sha256(copy / "config.yaml")}
            (copy / MARKER_FILE).write_text(json.dumps(marker))
        return folder

    monkeypatch.setattr(RunFolder, "open", staticmethod(open_then_replace))
    loaded = api.load_run(copy)
    assert len(calls) == 2 and loaded.cfg.train.epochs == 15


def files_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_paths_that_cannot_be_written_are_a_message(trained_run, tmp_path: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch):
    data, run = trained_run
    predict = ["predict", "--run", str(run), "--data", str(data), "--guids", str(data / "test_without_label.txt")]
    (tmp_path / "a_dir").mkdir()
    assert main([*predict, "--out", str(tmp_path / "a_dir"), "--quiet"]) == 2
    assert "is a folder; give a file path" in capsys.readouterr().err

    (tmp_path / "a_file").write_text("x")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a_file"), "--quiet"]) == 2
    assert "is a file; give a folder path" in capsys.readouterr().err

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a_file" / "run"), "--quiet"]) == 2
    assert "cannot write" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir", "")))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    for args in (["train", "--data", str(data), "--out", str(tmp_path / "ro" / "run"), "--quiet"],
                 [*predict, "--out", str(tmp_path / "ro" / "p.txt"), "--quiet"],
                 ["data", "check", "--data", str(data), "--out", str(tmp_path / "ro" / "report.json")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "Read-only file system" in err and err.count("\n") == 1 and "Traceback" not in err


def test_prediction_files_get_the_usual_mode(trained_run, tmp_path: Path):
    data, run = trained_run
    out = tmp_path / "p.txt"
    old = os.umask(0o022)
    try:
        files.file_mode.cache_clear()
        assert main(["predict", "--run", str(run), "--data", str(data), "--guids",
                     str(data / "test_without_label.txt"), "--out", str(out), "--quiet"]) == 0
    finally:
        os.umask(old)
        files.file_mode.cache_clear()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_data_check_exits_2_when_it_lists_problems(dataset: Path, tmp_path: Path, capsys):
    assert main(["data", "check", "--data", str(dataset), "--out", str(tmp_path / "r.json")]) == 0
    (dataset / "data" / "101.jpg").unlink()
    (dataset / "data" / "102.jpg").write_bytes(b"not an image")
    assert main(["data", "check", "--data", str(dataset), "--out", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert "problems: 2" in captured.out and "2 problem(s)" in captured.err
    assert len(json.loads((tmp_path / "r.json").read_text())["problems"]) == 2
