"""A bounded FIFO drained by one thread, so a slow or absent peer never blocks the run loop.

Used by the outputs that send one message per event in order (mqtt, webhook, log).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Worker(Generic[T]):
    """A bounded FIFO drained in order by one thread calling deliver(item).

    put() never blocks: when the queue is full the oldest item is dropped and on_drop(item) says so.
    deliver may block (a broker that is down, a retry backoff); it should use pause() to wait so
    that close() can interrupt it. An exception from deliver goes to on_error(item, err).
    """

    def __init__(self, deliver: Callable[[T], None], *, maxlen: int, name: str,
                 on_error: Callable[[T, BaseException], None], on_drop: Callable[[T], None],
                 start: bool = True) -> None:
        self._deliver, self._on_error, self._on_drop = deliver, on_error, on_drop
        self._queue: deque[T] = deque()
        self.maxlen = maxlen
        self._cond = threading.Condition()
        self._busy = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"edgead-{name}", daemon=True)
        if start:
            self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def put(self, item: T) -> None:
        dropped: list[T] = []
        with self._cond:
            self._queue.append(item)
            while len(self._queue) > self.maxlen:
                dropped.append(self._queue.popleft())
            self._cond.notify()
        for old in dropped:
            self._on_drop(old)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def pause(self, seconds: float) -> bool:
        """Sleep unless closing; False means stop trying (the worker is closing)."""
        return not self._closing.wait(seconds)

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, drain_s: float = 1.0) -> list[T]:
        """Deliver what is queued for up to drain_s, then stop; returns what was left undelivered."""
        if self._thread.is_alive():
            self.wait_idle(drain_s)
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._cond:
            left, self._queue = list(self._queue), deque()
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if self._closing.is_set():
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(item)
            except Exception as err:
                if not self._closing.is_set():
                    self._on_error(item, err)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
