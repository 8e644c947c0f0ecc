"""Sharded prediction: `predict --shard I/N` on N machines, `merge-predictions` back into the list's order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_dataset

from mmsent.cli import main
from mmsent.data.shards import Shard
from mmsent.errors import MmsentError


def shard_files(run: Path, data: Path, guids: Path, out: Path, count: int, *extra: str) -> list[Path]:
    """Predict every shard of guids into out/part-I.txt, as N machines would."""
    files = []
    for index in range(1, count + 1):
        path = out / f"part-{index}.txt"
        args = ["predict", "--run", str(run), "--data", str(data), "--guids", str(guids), "--out", str(path),
                "--shard", f"{index}/{count}", "--quiet", *extra]
        assert main(args) == 0
        files.append(path)
    return files


def merge(guids: Path, out: Path, files: list[Path]) -> int:
    return main(["merge-predictions", "--guids", str(guids), "--out", str(out), *map(str, files)])


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10])
def test_shards_are_contiguous_cover_the_list_once_and_differ_by_one_at_most(n: int):
    items = list(range(n))
    parts = [Shard(i, 4).select(items) for i in range(1, 5)]
    assert [x for part in parts for x in part] == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "1/0", "-1/2"])
def test_a_bad_shard_is_a_message(text: str):
    with pytest.raises(MmsentError, match="--shard"):
        Shard.parse(text)


def test_merged_shards_equal_one_prediction_of_the_whole_list(trained_run, tmp_path: Path, capsys):
    data, run = trained_run
    guids = data / "train.txt"  # 42 guids; predict ignores the tags
    whole = tmp_path / "whole.txt"
    assert main(["predict", "--run", str(run), "--data", str(data), "--guids", str(guids), "--out", str(whole), "--quiet"]) == 0
    files = shard_files(run, data, guids, tmp_path, 3)
    assert [len(f.read_text().splitlines()) - 1 for f in files] == [14, 14, 14]
    merged = tmp_path / "merged.txt"
    capsys.readouterr()
    assert merge(guids, merged, list(reversed(files))) == 0  # any order of files: the list gives the order
    assert merged.read_bytes() == whole.read_bytes()
    assert "merged 42 predictions from 3 file(s)" in capsys.readouterr().out


def test_a_merge_names_every_missing_or_duplicated_guid(trained_run, tmp_path: Path, capsys):
    data, run = trained_run
    guids = data / "train.txt"
    files = shard_files(run, data, guids, tmp_path, 3)
    missing = [line.split(",")[0] for line in files[2].read_text().splitlines()[1:]]
    duplicated = [line.split(",")[0] for line in files[0].read_text().splitlines()[1:]]
    out = tmp_path / "merged.txt"
    capsys.readouterr()
    assert merge(guids, out, [files[0], files[1], files[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("mmsent: error:") == 1 and "28 problem(s)" in err  # 14 predicted twice, 14 in no file
    assert all(f"guid {g}:" in err for g in missing + duplicated)
    assert "in no prediction file" in err and f"predicted in {files[0]} too" in err
    assert not out.exists()


def test_a_merge_refuses_guids_that_are_not_in_the_list(trained_run, tmp_path: Path, capsys):
    data, run = trained_run
    files = shard_files(run, data, data / "train.txt", tmp_path, 2)
    assert merge(data / "test_without_label.txt", tmp_path / "m.txt", files) == 2
    assert "not in the guid list" in capsys.readouterr().err


def test_guids_a_shard_skipped_are_left_out_of_the_merge_and_listed(trained_run, tmp_path: Path, capsys):
    _, run = trained_run
    data = make_dataset(tmp_path / "ds", per_class=4)
    guids = data / "train.txt"
    lines = guids.read_text().splitlines()[1:]
    broken = lines[8].split(",")[0]  # in the third of three shards
    (data / "data" / f"{broken}.jpg").write_bytes(b"not a jpeg")
    files = shard_files(run, data, guids, tmp_path / "out", 3, "--on-error", "skip")
    assert [json.loads(p.with_suffix(".skipped.json").read_text())[0]["guid"] for p in files if p.with_suffix(".skipped.json").exists()] == [broken]
    merged = tmp_path / "merged.txt"
    assert merge(guids, merged, files) == 0
    assert [line.split(",")[0] for line in merged.read_text().splitlines()[1:]] == [
        line.split(",")[0] for line in lines if not line.startswith(f"{broken},")]
    assert [row["guid"] for row in json.loads(merged.with_suffix(".skipped.json").read_text())] == [broken]
    assert "1 guid(s) skipped by their shards" in capsys.readouterr().out

    # fixed and predicted again: the stale list goes, and the merge is whole
    make_dataset(tmp_path / "fresh", per_class=4)
    (data / "data" / f"{broken}.jpg").write_bytes((tmp_path / "fresh" / "data" / f"{broken}.jpg").read_bytes())
    files = shard_files(run, data, guids, tmp_path / "out", 3, "--on-error", "skip")
    assert not any(p.with_suffix(".skipped.json").exists() for p in files)
    assert merge(guids, merged, files) == 0
    assert len(merged.read_text().splitlines()) == 1 + len(lines) and not merged.with_suffix(".skipped.json").exists()
