"""Launching `mmsent` as several CPU processes with `accelerate launch` (gloo), for the tests and benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import bert_options

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(cache: Path) -> dict[str, str]:
    """This checkout's code, a feature cache of the caller's own, one thread a process (the launcher's default)."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, MMSENT_CACHE=str(cache), OMP_NUM_THREADS="1")


def tiny_finetune_args(dataset: Path, out: Path, tokenizer: str, epochs: int, batch_size: int) -> list[str]:
    """`mmsent train` of a tiny random BERT fine-tuned with VADER cached, its backbone frozen in the first epoch.

    Seconds an epoch on a CPU; the learning rates make the second epoch the best on the tests' data set,
    so the saved model holds a trained backbone.
    """
    return ["train", "--data", str(dataset), "--out", str(out), "--quiet", "--preset", "finetune",
            "--set", "model.encoders=[vader,bert]", "--set", f"model.encoder_options.bert={json.dumps(bert_options(tokenizer))}",
            "--set", f"train.epochs={epochs}", "--set", f"train.patience={epochs}", "--set", f"train.batch_size={batch_size}",
            "--set", "train.freeze_epochs=1", "--set", "train.lr=1e-4", "--set", "train.backbone_lr=1e-3",
            "--set", "data.val_fraction=0.3", "--set", "runtime.num_workers=0", "--set", "runtime.threads=1"]


def launch(args: list[str], env: dict[str, str], processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch` of `python -m mmsent.cli ARGS` as N processes on this machine."""
    # --multi_gpu is Accelerate's name for its torchrun launcher; without a GPU the processes join over gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "mmsent.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
