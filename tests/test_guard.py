"""The leak guard refuses every way of putting held-out data into training."""

from pathlib import Path

import pytest

from mmsent.api import split_records, train
from mmsent.config import load_config
from mmsent.data.guard import LeakError, check_no_leak
from mmsent.data.records import Record, load_dataset


def rec(guid: str, source: str | None = None) -> Record:
    return Record(guid, "positive", "t", Path(f"{guid}.jpg"), source_guid=source)


def test_clean_split_passes():
    check_no_leak([rec("1"), rec("2"), rec("a1", source="1")], [rec("3")], ["9"])


@pytest.mark.parametrize(
    "train, needle",
    [
        ([rec("1"), rec("3")], "in the validation split"),
        ([rec("1"), rec("9")], "in the test list"),
        ([rec("1"), rec("aug-3", source="3")], "augmented copy of 3, which is in the validation split"),
        ([rec("1"), rec("aug-9", source="9")], "augmented copy of 9, which is in the test list"),
    ],
)
def test_each_leak_is_refused(train, needle):
    with pytest.raises(LeakError, match=needle):
        check_no_leak(train, [rec("3")], ["9"])


def test_training_goes_through_the_guard(dataset: Path, tmp_path: Path):
    cfg = load_config(overrides=["model.encoders=[vader]", "train.epochs=1"])
    ds = load_dataset(dataset)
    tr, val = split_records(ds.train, cfg)
    leaked = Record("aug-x", val[0].tag, val[0].text, val[0].image_path, source_guid=val[0].guid)
    with pytest.raises(LeakError):
        train(dataset, tmp_path / "r", cfg, quiet=True, extra_train=[leaked])
    with pytest.raises(LeakError):
        train(dataset, tmp_path / "r", cfg, quiet=True, split=(tr + val[:1], val))
    assert not (tmp_path / "r" / "model.safetensors").exists()
