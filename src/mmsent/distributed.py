"""Several processes of one job (`accelerate launch`, `torchrun`): the main process, shared decisions, shares of work.

A plain `mmsent` command is one process: every function here then answers at once and never touches
torch.distributed. Under a launcher every process runs the same command; the launcher's environment
(WORLD_SIZE > 1) says so, and the first collective call joins the process group through Accelerate
(gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, TypeVar

from mmsent.errors import FollowerError, MmsentError

T = TypeVar("T")
# how launchers tell a process how many there are: torchrun / accelerate launch, then MPI implementations
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
# the commands whose processes cooperate under a launcher; the others run as one process
LAUNCHABLE_COMMANDS = ("train", "run", "predict")


def _first_int(names: Sequence[str], default: int) -> int:
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return default


def process_count() -> int:
    """How many processes the launcher started (1 for a plain command)."""
    return max(_first_int(WORLD_SIZE_VARIABLES, 1), 1)


def launched() -> bool:
    """Whether this process is one of several that run the same command."""
    return process_count() > 1


def _state():
    """Accelerate's process state; its first use joins the process group."""
    import torch
    from accelerate import PartialState

    # without an accelerator Accelerate needs cpu=True to form a group of CPU processes (gloo)
    return PartialState(cpu=not torch.accelerator.is_available())


def process_index() -> int:
    """This process's rank, 0 to process_count() - 1."""
    return _state().process_index if launched() else 0


def is_main_process() -> bool:
    """The process that writes files and shows progress (the only one of a plain command)."""
    return not launched() or _state().is_main_process


def wait_for_everyone() -> None:
    """A barrier: returns once every process has reached it."""
    if launched():
        _state().wait_for_everyone()


def broadcast_from_main(value: T) -> T:
    """The main process's value, in every process (a decision taken once)."""
    if not launched():
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([value], from_process=0)[0]


def gather(value: T) -> list[T]:
    """Every process's value, in rank order, in every process."""
    if not launched():
        return [value]
    from accelerate.utils import gather_object

    _state()
    return list(gather_object([value]))


def my_share(items: Sequence[T]) -> list[T]:
    """This process's items of a list that every process holds alike: every process_count()-th, from its rank."""
    return list(items[process_index() :: process_count()])


def leave_process_group() -> None:
    """End this process's membership of the launch's process group, once its command is done (torch's documented
    way to close a group; every process of the launch reaches it)."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Exit with `code`; a launched process skips the interpreter's teardown once its output is flushed.

    Objects that outlive the command (a DistributedDataParallel model, Accelerate's state) keep gloo's
    C++ worker threads alive past destroy_process_group, and the interpreter's teardown destroys them while
    they still run: now and then a process that finished its work aborted on exit ("terminate called without
    an active exception", SIGABRT), and the launcher failed the whole job. Every file is written and closed
    by then, so nothing is lost by not tearing down.
    """
    if not launched():
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe has nothing left to flush
            stream.flush()
    os._exit(code)


def require_single_process(command: str) -> None:
    """Refuse a command whose processes cannot cooperate when it was started under a launcher."""
    if not launched():
        return
    message = (
        f"mmsent {command} runs as one process, but it was started as one of {process_count()} (accelerate launch / "
        f"torchrun); launch only {', '.join(f'mmsent {c}' for c in LAUNCHABLE_COMMANDS)} that way. A search uses "
        "several GPUs or machines as separate workers on one --storage (one worker per GPU: CUDA_VISIBLE_DEVICES=i)"
    )
    # every process would say the same: the first one says it, the others only stop
    raise (MmsentError if _first_int(RANK_VARIABLES, 0) == 0 else FollowerError)(message)
