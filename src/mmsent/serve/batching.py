"""Micro-batching: jobs that concurrent requests queue are run through the model together, on one worker thread."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# what run_jobs gives back for one job: its results, one per item, or the exception that job fails with
Outcome = list[Any] | Exception


@dataclass
class Job(Generic[T]):
    """One request's items and the future its handler awaits."""

    items: list[T]
    future: Future = field(default_factory=Future)


class MicroBatcher(Generic[T]):
    """Runs queued jobs (lists of items) through `run_jobs`, up to `max_items` items per call, on one thread.

    The worker takes the first queued job, then more for up to `max_wait_s` or until `max_items` items
    are gathered (a job is never split: one that does not fit starts the next batch, and one larger than
    max_items runs alone), and calls run_jobs once for all of them. While a batch runs, new jobs queue up
    and form the next one, so N concurrent clients cost about one model call, not N. run_jobs returns
    one outcome per job, in order, so a job that fails fails alone.
    """

    def __init__(self, run_jobs: Callable[[list[list[T]]], list[Outcome]], max_items: int, max_wait_s: float):
        self.run_jobs = run_jobs
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.calls = 0  # batches run so far
        self._queue: queue.SimpleQueue[Job[T] | None] = queue.SimpleQueue()  # None: stop
        self._held: Job[T] | None = None  # the job that did not fit the last batch
        self._thread = threading.Thread(target=self._work, name="mmsent-batcher", daemon=True)
        self._thread.start()

    async def submit(self, items: list[T]) -> list[Any]:
        """Queue items as one job and wait for their results without blocking the event loop."""
        job: Job[T] = Job(list(items))
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker once the jobs queued before this call have run."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[Job[T]] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_items:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            if size + len(job.items) > self.max_items:
                self._held = job
                break
            batch.append(job)
            size += len(job.items)
        return batch

    def _run(self, batch: list[Job[T]]) -> None:
        jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip clients that left
        if not jobs:
            return
        self.calls += 1
        try:
            outcomes = self.run_jobs([job.items for job in jobs])
        except Exception as exc:  # an unexpected failure answers every job of the batch; the worker lives on
            outcomes = [exc] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
