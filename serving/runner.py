"""The scheduler's decisions carried out on threads: decodes on one thread per decode slot (each
waits on a decoding process, so they take no core of their own), the model on one thread, so
that the next requests are decoded while the model runs this one.

    runner = Runner(scheduler, decode=fn(request), model=fn(batch))
    future = runner.submit(request)      # Infeasible for a strict request that cannot be served
    request = future.result()            # done: decode and model ran (or their error is raised)
    runner.drain(timeout_s=30)           # True once every admitted request has its answer

The stages fill in the request's payload (the caller's object); their errors fail the request's
future. Every scheduler call is made under one lock; the stages run outside it. The threads are
fixed, so glibc keeps one malloc arena per thread (a pool of changing threads would keep each
arena at its own peak).
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence

from .scheduler import Decode, Infeasible, Model, Refuse, Request, Scheduler


def now_ms() -> float:
    return time.perf_counter() * 1e3


class Runner:
    def __init__(self, scheduler: Scheduler, decode: Callable[[Request], None],
                 model: Callable[[Sequence[Request]], None],
                 clock: Callable[[], float] = now_ms,
                 on_change: Callable[[Scheduler], None] | None = None):
        self.scheduler, self.clock = scheduler, clock
        self._decode_fn, self._model_fn, self._on_change = decode, model, on_change
        self._lock = threading.Condition()
        self._futures: dict[Request, concurrent.futures.Future] = {}
        self._decoders = concurrent.futures.ThreadPoolExecutor(
            scheduler.policy.decode_slots + scheduler.policy.urgent_slots,
            thread_name_prefix="stretchysnake-decode")
        self._model = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="stretchysnake-model")

    # -- the caller's side
    def submit(self, request: Request) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            actions = self.scheduler.submit(request, self.clock())  # may raise Infeasible
            self._futures[request] = future
            settle = self._launch(actions)
        _settle(settle)
        return future

    def cancel(self, request: Request) -> None:
        """Drop a request that has not started yet (its client went away)."""
        with self._lock:
            settle = self._launch(self.scheduler.cancel(request, self.clock()))
            future = self._futures.pop(request, None) if request.state == "done" else None
            self._lock.notify_all()
        if future is not None:
            future.cancel()
        _settle(settle)

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._futures)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every admitted request has its answer; False if time ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._futures:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self) -> None:
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self._model.shutdown(wait=False, cancel_futures=True)

    # -- the stages
    def _launch(self, actions) -> list:
        """Start what the scheduler decided (under the lock); returns the futures to settle
        once the lock is released: [(future, result, error)]."""
        settle = []
        for a in actions:
            if isinstance(a, Decode):
                self._decoders.submit(self._decode, a.request)
            elif isinstance(a, Model):
                self._model.submit(self._run_model, a.batch)
            elif isinstance(a, Refuse):
                settle.append((self._futures.pop(a.request), None, Infeasible(a)))
        if self._on_change is not None:
            self._on_change(self.scheduler)
        if settle:
            self._lock.notify_all()
        return settle

    def _decode(self, request: Request) -> None:
        error = _call(self._decode_fn, request)
        with self._lock:
            settle = self._launch(self.scheduler.decoded(request, self.clock(),
                                                         failed=error is not None))
            if error is not None:
                settle.append((self._futures.pop(request), None, error))
                self._lock.notify_all()
        _settle(settle)

    def _run_model(self, batch: Sequence[Request]) -> None:
        error = _call(self._model_fn, batch)
        with self._lock:
            settle = self._launch(self.scheduler.modelled(batch, self.clock()))
            settle += [(self._futures.pop(r), r, error) for r in batch]
            self._lock.notify_all()
        _settle(settle)


def _call(fn, arg) -> BaseException | None:
    try:
        fn(arg)
    except BaseException as e:  # noqa: BLE001 - the request's answer, not the thread's end
        return e
    return None


def _settle(settle) -> None:
    for future, result, error in settle:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
