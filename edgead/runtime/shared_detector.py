"""One engine shared by several cameras: their inference threads' batches run together as one batch.

Each camera's run loop calls `infer()` on its own client (`SharedDetector.client(name)`), exactly as it
would call a detector of its own. One worker thread per engine takes the requests waiting, in arrival
order and up to the engine's max batch (a request that would overflow it waits for the next batch),
runs them as one `infer()`, and hands each caller its rows. While another active camera (one that
asked within the last ACTIVE_S) has no part in yet, it waits at most `window_s` (about a millisecond)
for it: cameras on one trigger send their parts within a millisecond of each other, and one batch of
two costs about as much as one part on a GPU. With one camera, every active camera's part already
in, the others stalled or lost, or the engine saturated (a part was already waiting when the last
batch ended: the batches fill by themselves), it never waits. An engine error reaches every caller of that batch: each camera
then gives its own safe action, with its own deadline; a hung engine holds every camera's parts, and
each camera's watchdog rejects them at their deadline.

No torch here (edge path): numpy only.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from edgead.protocols import Detector

ACTIVE_S = 0.5      # a camera that asked within this long is waited for (a lost or stalled one is not)


class _Request:
    __slots__ = ("client", "batch", "t", "done", "result", "error")

    def __init__(self, client: "DetectorClient", batch: np.ndarray) -> None:
        self.client, self.batch, self.t = client, batch, time.monotonic()
        self.done = threading.Event()
        self.result: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self.error: Optional[BaseException] = None


class SharedDetector:
    """The engine and its batching worker; `client(name)` is what one camera's loop is handed."""

    def __init__(self, detector: Detector, window_s: float = 0.001, name: str = "", owns: bool = True) -> None:
        self.detector, self.window_s, self.name, self.owns = detector, float(window_s), name, owns
        self.max_batch = int(detector.max_batch)
        self.clients: List[DetectorClient] = []
        self.batches = 0                # infer() calls made on the engine
        self.rows = 0                   # frames those calls carried
        self._pending: List[_Request] = []
        self._running = 0               # frames in the batch the engine runs now
        self._last_done = -float("inf")  # when the last batch came back from the engine
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"edgead-engine{'-' + name if name else ''}",
                                        daemon=True)
        self._thread.start()

    def client(self, name: str) -> "DetectorClient":
        c = DetectorClient(self, name)
        with self._cond:
            self.clients.append(c)
        return c

    def submit(self, client: "DetectorClient", batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Run `batch` (n <= max_batch rows) within the next combined batch; its engine error is raised here."""
        if len(batch) > self.max_batch:
            raise ValueError(f"batch of {len(batch)} exceeds the engine's max batch {self.max_batch}")
        req = _Request(client, batch)
        with self._cond:
            client.last_request = time.monotonic()
            if self._closed:
                raise RuntimeError("the shared engine is closed")
            self._pending.append(req)
            self._cond.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def backlog(self) -> int:
        """Frames waiting for this engine: every camera's inference queue, the requests pending and the batch
        running. A free-running camera skips its frame ("busy") while this is 2x the max batch or more, so
        an overloaded engine drops frames at the cameras instead of aging parts past their deadline."""
        with self._cond:
            waiting = sum(len(r.batch) for r in self._pending) + self._running
            queues = [c.queued for c in self.clients if c.queued is not None]
        return waiting + sum(int(q()) for q in queues)

    def saturated(self) -> bool:
        return self.backlog() >= 2 * self.max_batch

    def close(self) -> None:
        """Stop the worker (requests still waiting get an error), then close the engine (when it opened it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5.0)
        close = getattr(self.detector, "close", None) if self.owns else None
        if callable(close):
            close()

    # ------------------------------------------------------------ the worker

    def _take(self) -> List[_Request]:
        """The next batch: wait for a request, then (briefly) for the idle cameras' ones."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                left, self._pending = self._pending, []
                for r in left:
                    r.error = RuntimeError("the shared engine was closed")
                    r.done.set()
                return []
            end = time.monotonic() + self.window_s
            saturated = self._pending[0].t <= self._last_done
            while not saturated and self._rows_fit() < self.max_batch and self._waiting_for_others():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, rows = [], 0
            while self._pending and rows + len(self._pending[0].batch) <= self.max_batch:
                r = self._pending.pop(0)
                taken.append(r)
                rows += len(r.batch)
            self._running = rows
            return taken

    def _rows_fit(self) -> int:
        return sum(len(r.batch) for r in self._pending)

    def _waiting_for_others(self) -> bool:
        """Some active camera has no request in yet (so its part may come within the window)."""
        asking = {id(r.client) for r in self._pending}
        now = time.monotonic()
        return any(id(c) not in asking and now - c.last_request < ACTIVE_S for c in self.clients)

    def _work(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                with self._cond:
                    if self._closed:
                        return
                continue
            self._run(taken)

    def _run(self, taken: List[_Request]) -> None:
        try:
            batch = taken[0].batch if len(taken) == 1 else np.concatenate([r.batch for r in taken])
            try:
                scores, maps = self.detector.infer(batch)
            finally:
                with self._cond:
                    self._last_done = time.monotonic()
                    self._running = 0
            scores = np.asarray(scores).reshape(-1)
            if len(scores) != len(batch) or len(maps) != len(batch):
                raise RuntimeError(f"the engine returned {len(scores)} scores for {len(batch)} frames")
        except BaseException as e:  # noqa: BLE001 - every caller of this batch gets it (its safe action)
            for r in taken:
                r.error = e
                r.done.set()
            return
        self.batches += 1
        self.rows += len(batch)
        start = 0
        for r in taken:
            n = len(r.batch)
            r.result = (scores[start:start + n], maps[start:start + n])
            start += n
            r.done.set()


class DetectorClient:
    """One camera's view of a shared engine: the Detector protocol, its batches combined with the others'."""

    def __init__(self, shared: SharedDetector, name: str) -> None:
        self.shared, self.name = shared, name
        self.last_request = -float("inf")     # monotonic time of its last infer() (set by the shared engine)
        self.queued: Optional[Callable[[], int]] = None   # its loop's inference queue depth (watch_queue)
        d = shared.detector
        self.backend: str = d.backend
        self.precision: str = d.precision
        self.fingerprint: str = d.fingerprint
        self.max_batch: int = shared.max_batch

    def infer(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return self.shared.submit(self, batch)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """The loop hands over its inference queue's depth: part of the engine's backlog."""
        self.queued = depth

    def saturated(self) -> bool:
        """The shared engine has 2x its max batch waiting (all cameras together): a free-running frame is skipped."""
        return self.shared.saturated()

    def __getattr__(self, item: str) -> Any:   # anything else a backend offers (e.g. its manifest)
        if item == "shared":
            raise AttributeError(item)
        return getattr(self.shared.detector, item)
