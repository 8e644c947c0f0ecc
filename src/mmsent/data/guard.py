"""The leak guard: training data must share no guid (nor an augmented copy's source) with validation or test."""

from __future__ import annotations

from collections.abc import Iterable

from mmsent.data.records import Record
from mmsent.errors import MmsentError


class LeakError(MmsentError):
    """Training data overlaps the data a model is judged on."""


def find_leaks(train: Iterable[Record], held_out: dict[str, Iterable[str]]) -> list[str]:
    """Lines describing every train record whose guid or source guid is in a held-out set."""
    sets = {name: set(guids) for name, guids in held_out.items()}
    leaks = []
    for record in train:
        for name, guids in sets.items():
            if record.guid in guids:
                leaks.append(f"guid {record.guid} is in the training data and in the {name}")
            if record.source_guid is not None and record.source_guid in guids:
                leaks.append(
                    f"guid {record.guid} is an augmented copy of {record.source_guid}, which is in the {name}"
                )
    return leaks


def check_no_leak(train: list[Record], val: list[Record], test_guids: Iterable[str] = ()) -> None:
    """Refuse to train when any training record comes from the validation split or the test list."""
    leaks = find_leaks(train, {"validation split": [r.guid for r in val], "test list": test_guids})
    if leaks:
        shown = leaks[:20] + ([f"... and {len(leaks) - 20} more"] if len(leaks) > 20 else [])
        raise LeakError(
            "training refused: it would leak held-out data into training\n  "
            + "\n  ".join(shown)
            + "\nMine mistakes out of fold on the training split only (mmsent badcases) and keep "
            "augmented copies of validation or test guids out of training."
        )
