"""Helpers the experiments share: configs with dotted-key overrides, flat metric rows, a run's split records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmsent import LABELS
from mmsent.config import Config, _validate, config_to_dict, read_yaml_mapping
from mmsent.data.records import TRAIN_LIST, Record, load_records
from mmsent.errors import ConfigError, MmsentError

# the scalar metrics every experiment table shows, in this order
METRICS = ["accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc_ovr_macro"]


def config_with(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with `section.key` values set, validated like a config file."""
    raw = config_to_dict(cfg)
    for dotted, value in values.items():
        keys = [k for k in str(dotted).split(".") if k]
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {key} is not a config section")
        if not keys:
            raise ConfigError(f"empty config key {dotted!r}")
        node[keys[-1]] = value
    return _validate(raw, "overrides " + ", ".join(f"{k}={v}" for k, v in values.items()))


def metric_row(metrics: dict) -> dict[str, Any]:
    """The scalar metrics plus per-class F1 of a metrics dict, flat for a table."""
    row = {name: metrics.get(name) for name in METRICS}
    for label in LABELS:
        row[f"f1_{label}"] = metrics.get("per_class", {}).get(label, {}).get("f1")
    return row


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a non-empty mapping (grid, space, variants)."""
    return read_yaml_mapping(path, what, allow_empty=False)


def run_split(run_dir: Path) -> dict[str, list[str]]:
    """The run's split.json: {"train": [guids], "val": [guids]}."""
    path = Path(run_dir) / "split.json"
    if not path.is_file():
        raise MmsentError(f"{run_dir}: no split.json; pass a run folder written by `mmsent train`")
    return json.loads(path.read_text(encoding="utf-8"))


def guid_records(data_dir: Path, guids: list[str], max_pixels: int, required: bool = True) -> list[Record]:
    """Records of train.txt for guids, in their order (required: every guid must be there)."""
    records, problems = load_records(Path(data_dir), Path(data_dir) / TRAIN_LIST, labelled=True, max_pixels=max_pixels)
    by_guid = {r.guid: r for r in records}
    missing = [g for g in guids if g not in by_guid]
    if missing and required:
        reasons = {p.guid: p.reason for p in problems}
        detail = ", ".join(f"{g} ({reasons.get(g, 'not in train.txt')})" for g in missing[:10])
        raise MmsentError(
            f"{data_dir}: {len(missing)} guid(s) of the run's split cannot be loaded: {detail}. "
            "Pass the data folder the run was trained on."
        )
    return [by_guid[g] for g in guids if g in by_guid]
