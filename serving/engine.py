"""The engine: one worker thread owns the model and decodes every job in one running batch.

Requests wait in a bounded queue, join the batch at the next decoding step (continuous
batching) and leave it when they finish or their client goes away. Results travel back to the
event loop thread-safely; the event loop never runs model code.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from fingpt.checkpoint import LoadedModel
from fingpt.generation import Sampler, SamplingParams, Step

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The waiting queue is full."""


@dataclass
class Choice:
    """One sequence to generate: a prompt (as token ids) and its settings."""

    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class Job:
    """The choices of one HTTP job, and the channel their steps come back on."""

    choices: list[Choice]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True  # the worker drops this job's rows before its next step

    def emit(self, index: int, item: Step | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (index, item))


class Engine:
    def __init__(
        self, loaded: LoadedModel, max_batch_size: int = 16, max_queue: int = 64, metrics=None
    ) -> None:
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.sampler = Sampler(self.model, self.tokenizer, max_batch_size)
        self.max_queue = max_queue
        self.waiting: queue.Queue[tuple[Job, int]] = queue.Queue()
        self.owners: dict[int, tuple[Job, int]] = {}  # sampler row -> (job, choice index)
        self.metrics = metrics
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._run, name="fingpt-engine", daemon=True)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.stopping.set()
        self.worker.join(timeout=10)

    def submit(self, job: Job) -> None:
        """Queue every choice of a job, or none of them (Overloaded)."""
        waiting = self.waiting_choices()
        if waiting + len(job.choices) > self.max_queue:
            raise Overloaded(f"{waiting} choices are waiting (at most {self.max_queue})")
        for index in range(len(job.choices)):
            self.waiting.put((job, index))
        self._observe_queue()

    def waiting_choices(self) -> int:
        """Queued choices whose client still wants them: a cancelled job's leave the queue only
        when the worker reaches them, and must not keep new requests out meanwhile."""
        with self.waiting.mutex:
            return sum(not job.cancelled for job, _ in self.waiting.queue)

    def _observe_queue(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self.waiting_choices())

    def _admit(self, block: bool) -> None:
        """Move waiting choices into free rows; block for the first one when idle."""
        while self.sampler.free_rows:
            try:
                job, index = self.waiting.get(timeout=0.05) if block else self.waiting.get_nowait()
            except queue.Empty:
                break
            block = False
            if job.cancelled:
                continue
            choice = job.choices[index]
            try:
                row = self.sampler.add(choice.prompt_ids, choice.params)
            except Exception as e:  # noqa: BLE001 - a bad job must not stop the engine
                job.emit(index, e)
                continue
            self.owners[row] = (job, index)
        self._observe_queue()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self.stopping.is_set():
            self._admit(block=not self.owners)
            for row, (job, _) in list(self.owners.items()):
                if job.cancelled:  # the client went away: free its row
                    self.sampler.remove(row)
                    del self.owners[row]
            if not self.owners:
                continue
            try:
                steps = self.sampler.step()
            except Exception as e:  # noqa: BLE001 - report to every job in the batch
                log.exception("decoding step failed")
                for row, (job, index) in self.owners.items():
                    job.emit(index, e)
                    self.sampler.remove(row)
                self.owners.clear()
                continue
            if self.metrics:
                self.metrics.batch_size.observe(len(steps))
                self.metrics.tokens.inc(len(steps))
            for row, step in steps.items():
                job, index = self.owners[row]
                job.emit(index, step)
                if step.finish_reason:
                    del self.owners[row]
