"""One generic training loop: AdamW, early stopping on validation macro-F1, best weights kept."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmsent import distributed
from mmsent.config import TrainConfig
from mmsent.engine.metrics import accuracy_and_macro_f1

Batch = tuple[object, torch.Tensor]  # (model inputs, labels (B,))
EpochCallback = Callable[[dict], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FeatureBatches:
    """Mini-batches over in-memory feature tensors {name: (N, D)} and labels (N,), reshuffled each epoch.

    `rows` picks the rows of `features` (and of `y`) that these batches go over, so that the folds of a
    cross-fitted ensemble index the training features instead of each holding a copy of them.
    """

    def __init__(self, features: dict[str, np.ndarray], y: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
                 rows: np.ndarray | None = None):
        self.features = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in features.items()}
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.rows = None if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (self._count() + self.batch_size - 1) // self.batch_size

    def _count(self) -> int:
        return len(self.y) if self.rows is None else len(self.rows)

    def _epoch_order(self) -> torch.Tensor:
        """The rows of the features, in this epoch's order."""
        n = self._count()
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return order if self.rows is None else self.rows[order]

    def _take(self, idx: torch.Tensor) -> Batch:
        return {k: v[idx] for k, v in self.features.items()}, self.y[idx]

    def full_batch(self) -> Batch:
        """Every row in one batch, in the order an epoch's batches give them: one copy, not batches and their join."""
        return self._take(self._epoch_order())

    def __iter__(self):
        order = self._epoch_order()
        for start in range(0, len(order), self.batch_size):
            yield self._take(order[start : start + self.batch_size])


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_score: float
    stopped_early: bool
    seconds: float
    best_state: dict = field(repr=False, default_factory=dict)
    best_probs: np.ndarray | None = field(repr=False, default=None)  # validation probabilities of the best epoch
    batches: int = 0  # training batches this process went through, over all epochs
    steps: int = 0  # optimiser steps this process took


def to_device(obj, device: torch.device):
    """Move tensors inside nested dicts / lists / tuples to device; other objects (strings) stay."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights (the best epoch's are kept this way)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def predict_proba(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | None = None, accelerator=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities (N, C), labels (N,) and the mean unweighted loss over the labelled rows.

    With an `accelerator` the batches are this process's share of a prepared loader; every process
    gets the probabilities of all rows, gathered in the loader's order.
    """
    model.eval()
    probs, labels, losses = [], [], []
    for inputs, y in batches:
        if device is not None:
            inputs, y = to_device(inputs, device), y.to(device)
        logits = model(inputs).float()  # (B, C)
        p = torch.softmax(logits, dim=-1)
        loss = torch.where(y >= 0, nn.functional.cross_entropy(logits, y.clamp(min=0), reduction="none"), 0.0)  # (B,)
        if accelerator is not None:
            p, y, loss = accelerator.gather_for_metrics((p, y, loss))  # padding of uneven shares dropped
        probs.append(p.cpu().numpy())
        labels.append(y.cpu().numpy())
        losses.append(loss.cpu().numpy())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), float("nan")
    return np.concatenate(probs), np.concatenate(labels), float(np.concatenate(losses).mean())


def full_batch(batches: Iterable[Batch]) -> Batch:
    """Every training batch joined into one (full-batch optimisers)."""
    if isinstance(batches, FeatureBatches):
        return batches.full_batch()
    parts = list(batches)
    inputs = {k: torch.cat([b[k] for b, _ in parts]) for k in parts[0][0]}
    return inputs, torch.cat([y for _, y in parts])


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Half the summed squares of the weight matrices (biases and norms are not penalised)."""
    return 0.5 * sum((p ** 2).sum() for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1)


def fixed_inputs(model: nn.Module, inputs) -> tuple[Callable, object]:
    """For a full-batch optimiser: the model's input preparation done once, and what maps the prepared inputs to logits.

    A fusion classifier standardises and groups its cached features on every call, and a linear head joins
    the groups; L-BFGS calls them hundreds of times on the same batch, so that work (most of a logistic
    regression's time, and a copy of the batch per call) is done once. Each stage that prepares hands on
    to the next one (classifier -> head) until one has nothing to prepare.
    """
    forward = model
    while (prepare := getattr(forward, "prepare_fixed_inputs", None)) is not None:
        next_forward, inputs = prepare(inputs)
        if next_forward is forward:
            break
        forward = next_forward
    return forward, inputs


def lbfgs_closure(model: nn.Module, optimizer, loss_fn: nn.Module, inputs, y: torch.Tensor, l2: float,
                  forward: Callable | None = None):
    """The loss L-BFGS re-evaluates: mean class-weighted cross-entropy + l2 * ||W||^2 / 2.

    `forward` maps `inputs` to logits (default: the model itself; see fixed_inputs).
    """
    forward = forward or model

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(forward(inputs), y) + l2 * l2_penalty(model)
        loss.backward()
        return loss

    return closure


def training_loss(model: nn.Module, loss_fn: nn.Module, inputs, y: torch.Tensor) -> torch.Tensor:
    """The loss a training step minimises: the model's own `training_loss` if it has one (auxiliary losses),
    else loss_fn on its logits."""
    own = getattr(model, "training_loss", None)
    return own(inputs, y, loss_fn) if own is not None else loss_fn(model(inputs), y)


def fit(
    model: nn.Module,
    train_batches: Iterable[Batch],
    val_batches: Iterable[Batch],
    loss_fn: nn.Module,
    cfg: TrainConfig,
    param_groups: list[dict] | None = None,
    callbacks: list[EpochCallback] | None = None,
    quiet: bool = False,
    accelerator=None,
    desc: str = "train",
    on_epoch_start: Callable[[int], None] | None = None,
) -> FitResult:
    """Train with AdamW (or full-batch L-BFGS) until `epochs` or `patience` epochs without a better validation macro-F1.

    The returned model holds the weights of its best epoch. Callbacks see each epoch's record and
    may raise to stop the run (for example a search pruner); `on_epoch_start(epoch)` runs before each
    epoch (backbones frozen for the first ones, say). With a Hugging Face `accelerator`, device
    placement, mixed precision and gradient accumulation come from it, and so does the work of several
    processes: each trains on its share of the batches, validation gathers every process's predictions,
    and the main process decides when to stop.
    """
    params = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if cfg.optimizer == "lbfgs":
        if accelerator is not None:
            raise ValueError("train.optimizer=lbfgs trains a head on cached features (frozen mode)")
        # full-batch L-BFGS on the L2-penalised loss: with the linear head, exactly a logistic regression
        optimizer = torch.optim.LBFGS([p for g in params for p in g["params"]], lr=1.0, max_iter=cfg.lbfgs_steps,
                                      history_size=20, line_search_fn="strong_wolfe")
        inputs, y = full_batch(train_batches)
        forward, inputs = fixed_inputs(model, inputs)
        train_batches = [(inputs, y)]
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    device, trained = None, model  # `trained`: the module itself, without a wrapper for several processes
    if accelerator is not None:
        model, optimizer, train_batches, val_batches = accelerator.prepare(model, optimizer, train_batches, val_batches)
        loss_fn = loss_fn.to(accelerator.device)
        device = accelerator.device
        trained = accelerator.unwrap_model(model)
    history: list[dict] = []
    best_score, best_epoch, best_state, best_probs = -1.0, 0, snapshot(trained), None
    start = time.perf_counter()
    stopped_early = False
    batches_seen, steps_taken = 0, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, disable=quiet, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        loss_sum, n = 0.0, 0
        for inputs, y in train_batches:
            if cfg.optimizer == "lbfgs":
                loss = optimizer.step(lbfgs_closure(model, optimizer, loss_fn, inputs, y, cfg.weight_decay, forward))
                steps_taken += 1
            elif accelerator is None:
                optimizer.zero_grad(set_to_none=True)
                loss = training_loss(model, loss_fn, inputs, y)
                loss.backward()
                optimizer.step()
                steps_taken += 1
            else:
                loss = _accelerated_step(model, optimizer, loss_fn, to_device(inputs, device), y.to(device), accelerator)
                steps_taken += int(accelerator.sync_gradients)  # accumulating batches step once
            batches_seen += 1
            loss_sum += loss.item() * len(y)
            n += len(y)
        if accelerator is not None and accelerator.num_processes > 1:
            loss_sum, n = _summed_over_processes(accelerator, loss_sum, n)
        probs, y_val, val_loss = predict_proba(model, val_batches, device, accelerator)
        val_accuracy, val_macro_f1 = accuracy_and_macro_f1(y_val, probs.argmax(axis=1), probs.shape[1])
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "val_macro_f1": val_macro_f1,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        bar.set_postfix(f1=f"{val_macro_f1:.3f}", best=f"{max(best_score, val_macro_f1):.3f}")
        improved = _decided_once(val_macro_f1 > best_score, accelerator)
        if improved:
            best_score, best_epoch = val_macro_f1, epoch
            best_state, best_probs = snapshot(trained), probs
        for callback in callbacks or []:
            callback(record)
        if _decided_once(epoch - best_epoch >= cfg.patience, accelerator):
            stopped_early = True
            break
    bar.close()
    trained.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_score, stopped_early, time.perf_counter() - start, best_state,
                     best_probs, batches_seen, steps_taken)


def _decided_once(decision: bool, accelerator) -> bool:
    """The main process's decision, in every process that trains with it.

    Every process holds the same gathered predictions; still, one decides and the others follow, so
    that they never disagree on the epoch to keep or on stopping. Without an accelerator each process
    trains on its own (a head on cached features) and decides for itself.
    """
    return distributed.broadcast_from_main(decision) if accelerator is not None else decision


def _accelerated_step(model: nn.Module, optimizer, loss_fn: nn.Module, inputs, y: torch.Tensor, accelerator) -> torch.Tensor:
    """One batch through Accelerate: forward, backward, and an optimiser step once the accumulated batches are in."""
    with accelerator.accumulate(model):
        loss = loss_fn(model(inputs), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def _summed_over_processes(accelerator, loss_sum: float, n: int) -> tuple[float, int]:
    """The training loss summed over every process's batches, and their number of rows."""
    both = accelerator.reduce(torch.tensor([loss_sum, float(n)], device=accelerator.device), reduction="sum")
    return float(both[0]), int(both[1])
