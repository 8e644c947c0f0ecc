"""Progress that tells where a long command is: one line per step, an estimate of the time left, quiet is silent."""

from __future__ import annotations

import io
import re

from mmsent.cli import main
from mmsent.progress import Progress, clock


def test_one_line_per_step_with_the_time_left(monkeypatch):
    ticks = iter([0.0, 10.0, 20.0, 30.0])  # start, then one step every 10 s
    monkeypatch.setattr("mmsent.progress.now", lambda: next(ticks))
    log = io.StringIO()
    with Progress("preset", 3, stream=log) as progress:
        for name in ("default", "tfidf_resnet18", "clip"):
            progress.step(name)
    lines = log.getvalue().splitlines()
    assert lines[0] == "preset 1/3: default"
    assert lines[1] == "preset 2/3: tfidf_resnet18 (elapsed 0:10, about 0:20 left)"
    assert lines[2] == "preset 3/3: clip (elapsed 0:20, about 0:10 left)"
    assert lines[3] == "presets done: 3 in 0:30"


def test_quiet_is_silent_and_a_failed_step_is_not_counted_done():
    log = io.StringIO()
    with Progress("fold", 2, quiet=True, stream=log) as progress:
        progress.step("r0f0")
        progress.note("a note")
    assert log.getvalue() == ""
    log = io.StringIO()
    try:
        with Progress("fold", 2, stream=log) as progress:
            progress.step("r0f0")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert log.getvalue() == "fold 1/2: r0f0\n" and progress.done == 0


def test_clock():
    assert (clock(5), clock(65), clock(3725)) == ("0:05", "1:05", "1:02:05")


def test_seeds_says_which_seed_it_trains(dataset, tmp_path, capsys):
    args = ["seeds", "--data", str(dataset), "--out", str(tmp_path / "seeds"), "--seeds", "1,2",
            "--set", "model.encoders=[vader]", "--set", "train.epochs=2", "--set", "model.hidden_dim=8"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"^seed 1/2: 1$", err, re.M) and re.search(r"^seed 2/2: 2 \(elapsed \d+:\d\d, about \d+:\d\d left\)$", err, re.M)
    assert main([*args[:4], str(tmp_path / "quiet"), *args[5:], "--quiet"]) == 0
    assert capsys.readouterr().err == ""
