"""Adaptive batching inside the service's process: concurrent requests' jobs merged into one model call.

The model runs in one worker thread, one batch at a time, so the event loop keeps reading, checking
and answering requests while it computes. A batch takes every job waiting, up to `max_batch_size`.
When fewer are waiting than the recent demand (the most jobs waiting or running at once in the last
second), it waits a little for the rest to arrive: at most half the last batch's running time and
at most half the oldest job's limit, so that a crowd fills each batch instead of splitting into ragged
ones, while a lone client, a second after any crowd, does not wait.
A job that waited longer than `max_latency_s` before its batch started is refused with 503
(overloaded) rather than answered late.

In the same process there is no second server to call, no connection to keep and no second JSON
round trip: at one sample per request the hop cost more than a small model did (bench/serve.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bentoml.exceptions import ServiceUnavailable

DEMAND_WINDOW_S = 1.0  # how long a burst's size is remembered when waiting for a batch to fill
INLINE_S = 0.005  # a lone job whose model calls take less than this runs on the event loop itself
INLINE_ROUNDS = 3  # loop rounds a lone job waits for company: reading a request, routing it, checking it


class Batcher:
    def __init__(
        self,
        run: Callable[[list], list],
        max_batch_size: int,
        max_latency_s: float,
        size: Callable[[object], float] = lambda job: 1.0,
    ) -> None:
        """`size(job)`: the job's work in some unit (samples, characters to write): a lone job runs
        inline only when the time per unit measured so far, times its size, is under INLINE_S."""
        self.run, self.max_batch_size, self.max_latency_s = run, max_batch_size, max_latency_s
        self.size = size
        self.queue: deque[tuple[object, asyncio.Future, float]] = deque()
        self.arrived: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.running = 0  # jobs in the batch being computed
        self.last_run_s = 0.0
        self.unit_s = math.inf  # one-job calls' time per unit of size: unknown until one has run
        self.demand: deque[tuple[float, int]] = deque()  # (when, jobs waiting or running)

    async def submit(self, job):
        """The model's answer for one job, computed with whatever else is waiting.

        A lone small job for a quick model (its size times the time per unit of one-job calls so far
        under INLINE_S) is computed at once on the event loop: handing it to the model's thread and
        back would cost more than the call. It first lets the loop run a few rounds, so that
        requests which arrived meanwhile (while the loop was busy) join it; then it is a batch like
        any other."""
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done():
            self.arrived = asyncio.Event()
            self.worker = loop.create_task(self._work())
        entry = (job, loop.create_future(), time.monotonic())
        self.queue.append(entry)
        self._note_demand(len(self.queue) + self.running)
        if len(self.queue) == 1 and not self.running and self.unit_s * self.size(job) < INLINE_S:
            try:
                for _ in range(INLINE_ROUNDS):
                    await asyncio.sleep(0)
            except asyncio.CancelledError:  # its request ended meanwhile: the job goes too
                with contextlib.suppress(ValueError):
                    self.queue.remove(entry)
                raise
            if len(self.queue) == 1 and self.queue[0] is entry and not self.running:
                self.queue.popleft()
                started = time.monotonic()
                result = self.run([job])[0]
                self.last_run_s = time.monotonic() - started  # an inline call is a batch of one too
                self._lone(job, self.last_run_s)
                return result
        self.arrived.set()
        return await entry[1]

    def _note_demand(self, jobs: int) -> None:
        now = time.monotonic()
        self.demand.append((now, jobs))
        while self.demand and self.demand[0][0] < now - DEMAND_WINDOW_S:
            self.demand.popleft()

    def _target(self) -> int:
        recent = time.monotonic() - DEMAND_WINDOW_S
        return min(self.max_batch_size, max((n for at, n in self.demand if at >= recent), default=1))

    async def _work(self) -> None:
        while True:
            while not self.queue:
                self.arrived.clear()
                await self.arrived.wait()
            # wait for company at most half the last call, and at most half the oldest job's limit
            # (waiting up to the limit itself would have that job refused as overloaded)
            deadline = min(time.monotonic() + self.last_run_s / 2, self.queue[0][2] + self.max_latency_s / 2)
            while len(self.queue) < self._target() and (left := deadline - time.monotonic()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.max_batch_size))]
            now = time.monotonic()
            live = []
            for job, future, since in batch:
                if future.done():  # its request was cancelled (the client left, or it timed out)
                    continue
                if now - since > self.max_latency_s:
                    waited = f"overloaded: waited over {self.max_latency_s * 1000:g} ms"
                    future.set_exception(ServiceUnavailable(f"{waited} for the model"))
                    continue
                live.append((job, future))
            if not live:
                continue
            self.running = len(live)
            try:
                results, seconds = await asyncio.get_running_loop().run_in_executor(
                    self.thread, self._timed, [job for job, _ in live]
                )
                self.last_run_s = seconds  # the next wait for company is bounded by half of it
                if len(live) == 1:
                    self._lone(live[0][0], seconds)
            except Exception as err:  # every request of the batch gets the error
                results = [err] * len(live)
            finally:
                self.running = 0
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _lone(self, job, seconds: float) -> None:
        """A one-job call's time per unit of size, smoothed: one slow call (a collection, a busy core)
        changes little."""
        unit = seconds / max(self.size(job), 1e-9)
        self.unit_s = unit if math.isinf(self.unit_s) else 0.8 * self.unit_s + 0.2 * unit

    def _timed(self, jobs: list) -> tuple[list, float]:
        """The model's call and its time alone (not the hand-over to the thread and back)."""
        started = time.monotonic()
        results = self.run(jobs)
        return results, time.monotonic() - started

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.thread.shutdown(wait=False, cancel_futures=True)
