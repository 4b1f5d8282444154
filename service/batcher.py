"""Adaptive batching inside the service's process: concurrent requests' jobs merged into one model call.

The model runs in one worker thread, one batch at a time, so the event loop keeps reading, checking
and answering requests while it computes. A batch takes every job waiting, up to `max_batch_size`.
When fewer are waiting than the recent demand (the most jobs waiting or running at once in the last
second), it waits a little for the rest to arrive: at most half the last batch's running time, so
that a lone client never waits and a crowd fills each batch instead of splitting into ragged ones.
A job that waited longer than `max_latency_s` before its batch started is refused with 503
(overloaded) rather than answered late.

In the same process there is no second server to call, no connection to keep and no second JSON
round trip: at one sample per request the hop cost more than a small model did (bench/serve.py).
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, run: Callable[[list], list], max_batch_size: int, max_latency_s: float) -> None:
        self.run, self.max_batch_size, self.max_latency_s = run, max_batch_size, max_latency_s
        self.queue: deque[tuple[object, asyncio.Future, float]] = deque()
        self.arrived: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.running = 0  # jobs in the batch being computed
        self.last_run_s = 0.0
        self.lone_s = math.inf  # one-job calls' time: unknown until the model's thread has run one
        self.demand: deque[tuple[float, int]] = deque()  # (when, jobs waiting or running)

    async def submit(self, job):
        """The model's answer for one job, computed with whatever else is waiting.

        A lone job for a quick model (under INLINE_S a call on average) is computed at once on the
        event loop: handing it to the model's thread and back would cost more than the call. It
        first lets the loop run a few rounds, so that requests which arrived meanwhile (while the
        loop was busy) join it; then it is a batch like any other."""
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done():
            self.arrived = asyncio.Event()
            self.worker = loop.create_task(self._work())
        entry = (job, loop.create_future(), time.monotonic())
        self.queue.append(entry)
        self._note_demand(len(self.queue) + self.running)
        if len(self.queue) == 1 and not self.running and self.lone_s < INLINE_S:
            for _ in range(INLINE_ROUNDS):
                await asyncio.sleep(0)
            if len(self.queue) == 1 and self.queue[0] is entry and not self.running:
                self.queue.popleft()
                started = time.monotonic()
                result = self.run([job])[0]
                self._lone(time.monotonic() - started)
                return result
        self.arrived.set()
        return await entry[1]

    def _note_demand(self, jobs: int) -> None:
        now = time.monotonic()
        self.demand.append((now, jobs))
        while self.demand and self.demand[0][0] < now - DEMAND_WINDOW_S:
            self.demand.popleft()

    def _target(self) -> int:
        return min(self.max_batch_size, max((n for _, n in self.demand), default=1))

    async def _work(self) -> None:
        while True:
            while not self.queue:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = time.monotonic() + self.last_run_s / 2
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
                results, self.last_run_s = await asyncio.get_running_loop().run_in_executor(
                    self.thread, self._timed, [job for job, _ in live]
                )
            except Exception as err:  # every request of the batch gets the error
                results = [err] * len(live)
            finally:
                self.running = 0
            if len(live) == 1:
                self._lone(self.last_run_s)
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _lone(self, seconds: float) -> None:
        """A one-job call's time, smoothed: one slow call (a collection, a busy core) changes little."""
        self.last_run_s = seconds
        self.lone_s = seconds if math.isinf(self.lone_s) else 0.8 * self.lone_s + 0.2 * seconds

    def _timed(self, jobs: list) -> tuple[list, float]:
        """The model's call and its time alone (not the hand-over to the thread and back)."""
        started = time.monotonic()
        results = self.run(jobs)
        return results, time.monotonic() - started

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.thread.shutdown(wait=False, cancel_futures=True)
