"""Where a long command is: one line per preset, variant, seed, fold, perturbation or trial, with the time left.

A line, not an outer tqdm bar: the inner bars (encoding, training) leave their lines behind, and an
outer bar above them is overwritten on a terminal and unreadable in a log file, where lines are not.
The time left is the mean time of the steps done times the steps left. Quiet silences it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def now() -> float:
    return time.perf_counter()


def clock(seconds: float) -> str:
    """1:02:05 or 4:05, as tqdm writes times."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Steps of one kind ("preset", "fold", ...): call step(label) as each starts; the one before is then done."""

    def __init__(self, what: str, total: int | None, quiet: bool = False, stream: TextIO | None = None):
        self.what, self.total, self.quiet = what, total, quiet
        self.stream = stream
        self.started = now()
        self.done = 0
        self.current: str | None = None

    def step(self, text: str) -> None:
        """The next step starts (the one before it, if any, is done): "preset 2/8: clip (elapsed 1:10, about 5:50 left)"."""
        if self.current is not None:
            self.done += 1
        count = f"{self.done + 1}/{self.total}" if self.total else f"{self.done + 1}"
        self.current = f"{self.what} {count}: {text}"
        self._print(f"{self.current}{self._eta()}")

    def note(self, text: str) -> None:
        """A line for the user: what will happen, how long it may take, what a step found."""
        self._print(text)

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream or sys.stderr, flush=True)

    def _eta(self) -> str:
        if not self.done:
            return ""
        elapsed = now() - self.started
        if not self.total:
            return f" (elapsed {clock(elapsed)})"
        left = elapsed / self.done * max(self.total - self.done, 0)
        return f" (elapsed {clock(elapsed)}, about {clock(left)} left)"

    def close(self) -> None:
        if self.current is not None:
            self.done += 1
            self.current = None
            self._print(f"{self.what}s done: {self.done} in {clock(now() - self.started)}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.current = None  # a failed step is not done, and nothing is summed up
        self.close()
