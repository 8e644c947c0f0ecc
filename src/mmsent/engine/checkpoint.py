"""Run checkpoints: safetensors weights, the module spec and fitted encoder state, beside config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from mmsent import LABELS, __version__
from mmsent.config import Config, load_config, save_config
from mmsent.errors import MmsentError
from mmsent.model import FusionClassifier

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"


def head_kwargs(cfg: Config) -> dict:
    m = cfg.model
    return {"hidden_dim": m.hidden_dim, "dropout": m.dropout, "layernorm": m.layernorm}


def build_classifier(
    cfg: Config, encoder_dims: dict[str, int], encoder_modalities: dict[str, str], token_encoders: list[str] | None = None
) -> FusionClassifier:
    return FusionClassifier(
        encoder_dims, encoder_modalities, cfg.model.head, head_kwargs(cfg), len(LABELS), token_encoders
    )


def save_checkpoint(run_dir: Path, cfg: Config, classifier: FusionClassifier, encoder_state: dict[str, dict]) -> None:
    """Write config.yaml, model.safetensors and model.json into run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_FILE)
    tensors = {k: v.detach().contiguous().cpu() for k, v in classifier.state_dict().items()}
    save_file(tensors, str(run_dir / WEIGHTS_FILE), metadata={"mmsent_version": __version__})
    spec = {"mmsent_version": __version__, "labels": list(LABELS), **classifier.spec(), "encoder_state": encoder_state}
    (run_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


ENCODERS_FILE = "encoders.safetensors"


def save_encoder_weights(run_dir: Path, encoders: dict) -> None:
    """Fine-tuned encoder weights as `{encoder}.{parameter}` tensors."""
    tensors = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name, encoder in encoders.items()
        for key, value in encoder.state_dict().items()
    }
    save_file(tensors, str(run_dir / ENCODERS_FILE), metadata={"mmsent_version": __version__})


def mark_tuned(run_dir: Path, encoders: dict) -> None:
    """Key the feature cache of fine-tuned encoders by the digest of their saved weights."""
    import hashlib

    digest = hashlib.sha256((run_dir / ENCODERS_FILE).read_bytes()).hexdigest()[:16]
    for encoder in encoders.values():
        encoder.tuned_digest = digest


def load_encoder_weights(run_dir: Path, encoders: dict) -> None:
    """Load fine-tuned encoder weights strictly."""
    path = run_dir / ENCODERS_FILE
    if not path.is_file():
        raise MmsentError(f"{run_dir} is a fine-tuned run but {ENCODERS_FILE} is missing")
    tensors = load_file(str(path))
    for name, encoder in encoders.items():
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        encoder.load_state_dict(state, strict=True)
    mark_tuned(run_dir, encoders)


def load_checkpoint(run_dir: Path) -> tuple[Config, FusionClassifier, dict[str, dict]]:
    """Rebuild config, classifier (strict load) and fitted encoder state from a run folder."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE, SPEC_FILE):
        if not (run_dir / name).is_file():
            raise MmsentError(f"{run_dir} is not a trained run: {name} is missing (train one with `mmsent train`)")
    cfg = load_config(run_dir / CONFIG_FILE)
    spec = json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8"))
    if tuple(spec["labels"]) != LABELS:
        raise MmsentError(f"{run_dir}: checkpoint labels {spec['labels']} differ from {list(LABELS)}")
    classifier = build_classifier(cfg, spec["encoder_dims"], spec["encoder_modalities"], spec.get("token_encoders"))
    classifier.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)), strict=True)
    classifier.eval()
    return cfg, classifier, spec.get("encoder_state", {})
