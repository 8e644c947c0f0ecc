"""User-facing errors: each becomes one clear message and exit code 2, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class MmsentError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 2


class ConfigError(MmsentError):
    """The config file or an override is invalid."""


class FollowerError(MmsentError):
    """An error the main process of a launch reports; the other processes stop with it without repeating it."""


class WeightsNotFoundError(MmsentError):
    """Pretrained weights for an encoder are not available offline."""


@dataclass(frozen=True)
class Problem:
    """One problem with one guid (or with a whole file when guid is None)."""

    guid: str | None
    path: str
    reason: str

    def line(self) -> str:
        who = f"guid {self.guid}" if self.guid is not None else "file"
        return f"{who}: {self.path}: {self.reason}"


class DataError(MmsentError):
    """A data set has problems; all of them are listed together, one line each."""

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems = problems
        lines = [f"the data set has {len(problems)} problem(s):"]
        lines += ["  " + p.line() for p in problems]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))
