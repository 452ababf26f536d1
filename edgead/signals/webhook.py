"""Webhook output: HTTP POST of the JSON event to a MES or alerting endpoint, with retries.

Posts go out from the sink's own thread in order; a failed post is retried with doubling backoff
(connection errors, timeouts, 5xx, 408 and 429), while other 4xx answers fail at once (a wrong URL
or token does not get better by asking again). After the last retry the event is given up and the
alarm raised. Standard library only (urllib), so it works wherever edgead does.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from edgead.protocols import InspectionEvent
from edgead.signals.base import SinkBase
from edgead.signals.config import WebhookConfig, resolve_secret
from edgead.signals.log import event_json, utc_now
from edgead.signals.worker import Worker

RETRYABLE_HTTP = (408, 429)


class WebhookSink(SinkBase):
    def __init__(self, cfg: WebhookConfig, probe: bool = True) -> None:
        url = urllib.parse.urlsplit(cfg.url)
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        super().__init__(cfg.name, cfg.url)
        self.cfg = cfg
        self._drop_reported = False
        token = resolve_secret("webhook", cfg.name, "token", cfg.token, cfg.token_env)
        self._headers = {"Content-Type": "application/json", "User-Agent": "edgead"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.worker: Worker[bytes] = Worker(self._deliver, maxlen=cfg.queue, name=f"{cfg.name}-poster",
                                            on_error=self._on_error, on_drop=self._on_drop)
        if probe:
            self.probe()

    def probe(self) -> bool:
        """Is anything listening at the URL's host and port? (Health at start, without posting.)"""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.cfg.timeout_ms / 1000):
                pass
        except OSError as err:
            self._fail(f"cannot connect to {self.host}:{self.port}: {err}")
            return False
        self._ok()
        return True

    def reject(self, event: InspectionEvent) -> None:
        if self.wants(event, self.cfg.per_part):
            self.worker.put(event_json(event).encode())

    def post(self, body: bytes) -> int:
        """One POST; returns the HTTP status (2xx), raises HTTPError / URLError / OSError."""
        req = urllib.request.Request(self.cfg.url, data=body, headers=self._headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_ms / 1000) as resp:
            resp.read()
            return int(resp.status)

    def _deliver(self, body: bytes) -> None:
        delay = self.cfg.backoff_ms / 1000
        for attempt in range(self.cfg.retries + 1):
            try:
                self.post(body)
                self.stats["sent"] += 1
                self._drop_reported = False
                self._ok()
                return
            except urllib.error.HTTPError as err:
                if err.code < 500 and err.code not in RETRYABLE_HTTP:
                    raise OSError(f"HTTP {err.code} {err.reason} (not retried: check the url and token)") from None
                last: Exception = OSError(f"HTTP {err.code} {err.reason}")
            except (urllib.error.URLError, OSError) as err:
                last = OSError(str(getattr(err, "reason", err)))
            if attempt == self.cfg.retries:
                break
            self.stats["retries"] += 1
            if not self.worker.pause(delay):
                return
            delay *= 2
        raise OSError(f"{last} after {self.cfg.retries + 1} attempts")

    def _on_error(self, body: bytes, err: BaseException) -> None:
        self.stats["failed"] += 1
        self._fail(f"POST {self.cfg.url} failed: {err}; the event was given up", every_time=True)

    def _on_drop(self, body: bytes) -> None:
        self.stats["dropped"] += 1
        if not self._drop_reported:          # one alarm until the next successful post, not one per event
            self._drop_reported = True
            self._notify("dropped", f"queue full ({self.cfg.queue}): events are not being posted to {self.cfg.url}")

    def fire_test(self) -> str:
        """POST one test event now (no retries) and report the answer."""
        event = InspectionEvent(seq=0, t_capture=time.monotonic(), wall_time=utc_now(), decision="test",
                                score=None, threshold=None, reason="edgead signals test")
        try:
            status = self.post(event_json(event).encode())
        except urllib.error.HTTPError as err:
            raise OSError(f"{self.cfg.url} answered HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise OSError(f"cannot reach {self.cfg.url}: {err.reason}") from None
        return f"POST {self.cfg.url} -> HTTP {status}"

    def close(self) -> None:
        left = self.worker.close(drain_s=2.0)
        if left:
            self.stats["unsent"] += len(left)
