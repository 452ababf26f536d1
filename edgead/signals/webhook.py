"""Webhook output: HTTP POST of the JSON event to a MES or alerting endpoint, with retries.

Every event goes into the output's durable outbox first (edgead.signals.outbox); the sender thread
posts the records in order and a record leaves the outbox on a 2xx answer. A failed post is
retried with doubling backoff (connection errors, timeouts, 5xx, 408 and 429); after `retries`
the alarm is raised and the event keeps being retried (capped backoff) until the peer is back or
edgead stops, when it stays in the outbox for the next start. Other 4xx answers are not retried (a
wrong URL or token does not get better by asking again): the event is alarmed, left in the
outbox for the next start, and the next one is posted. Standard library only (urllib).
"""

from __future__ import annotations

import base64
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from edgead.protocols import InspectionEvent
from edgead.signals.config import WebhookConfig, resolve_secret
from edgead.signals.log import event_json, utc_now
from edgead.signals.outbox import Record
from edgead.signals.outbox_sink import OutboxSink

RETRYABLE_HTTP = (408, 429)


class _Refused(Exception):
    """The peer answered a 4xx that asking again will not change."""


class WebhookSink(OutboxSink):
    PROBE_S = 1.0       # while the peer is unreachable and nothing waits: how often to see whether it is back

    def __init__(self, cfg: WebhookConfig, probe: bool = True, outbox_dir: str | Path | None = None) -> None:
        url = urllib.parse.urlsplit(cfg.url)
        token = resolve_secret("webhook", cfg.name, "token", cfg.token, cfg.token_env)
        self.url = _without_userinfo(url)       # posted to, and named in every message: never a password
        super().__init__(cfg, self.url, outbox_dir, readahead=cfg.queue)
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.cfg = cfg
        self._headers = {"Content-Type": "application/json", "User-Agent": "edgead"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif url.username is not None:          # http://user:password@host/...: HTTP basic authentication
            pair = f"{urllib.parse.unquote(url.username)}:{urllib.parse.unquote(url.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._unreachable = False
        self._retries_alarmed = False
        self._next_probe = 0.0
        if probe:
            self.probe()
        self.start_sender()

    def probe(self) -> bool:
        """Is anything listening at the URL's host and port? (Health at start, without posting.)"""
        why = self._connect_error()
        if why:
            self._fail(why)
            return False
        self._ok()
        return True

    def _connect_error(self) -> str:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.cfg.timeout_ms / 1000):
                pass
        except OSError as err:
            self._unreachable = True
            return f"cannot connect to {self.host}:{self.port}: {err}"
        self._unreachable = False
        return ""

    def reject(self, event: InspectionEvent) -> None:
        if self.wants(event, self.cfg.per_part):
            self._append(event, {"body": event_json(event)})

    def post(self, body: bytes) -> int:
        """One POST; returns the HTTP status (2xx), raises HTTPError / URLError / OSError."""
        req = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_ms / 1000) as resp:
            resp.read()
            return int(resp.status)

    def _attempt(self, body: bytes) -> str:
        """One POST: "" when the peer took it, else why not; _Refused for a 4xx not worth retrying."""
        try:
            self.post(body)
            return ""
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code not in RETRYABLE_HTTP:
                raise _Refused(f"HTTP {err.code} {err.reason} (not retried: check the url and token)") from None
            self._unreachable = False
            return f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError) as err:
            self._unreachable = True
            return str(getattr(err, "reason", err))

    def _send(self, rec: Record) -> None:
        body = str(rec.msg["body"]).encode()
        delay = self.cfg.backoff_ms / 1000
        attempts = 0
        while True:
            try:
                why = self._attempt(body)
            except _Refused as err:
                self.stats["rejected"] += 1
                self._unreachable = False
                self._fail(f"POST {self.url} refused event {rec.event_id}: {err}; it stays in the outbox "
                           f"for the next start", every_time=True)
                self._skip(rec)
                return
            attempts += 1
            if not why:
                self._acked(rec.n)
                self.stats["sent"] += 1
                self._retries_alarmed = False
                self._ok()
                return
            if attempts == self.cfg.retries + 1 and not self._retries_alarmed:   # once per outage
                self._retries_alarmed = True
                self.stats["failed"] += 1
                self._fail(f"POST {self.url} failed: {why} after {attempts} attempts; events wait in the "
                           f"outbox and are retried", every_time=True)
            self.stats["retries"] += 1
            if self._stop_sending.wait(delay):
                return                      # closing: stays in the outbox for the next start
            delay = min(delay * 2, self.cfg.backoff_max_ms / 1000)

    def _idle(self) -> None:
        if self._unreachable and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + self.PROBE_S
            if not self._connect_error():
                self._ok()                  # the peer is back: "recovered" clears its alarm

    def fire_test(self) -> str:
        """POST one test event now (not through the outbox, no retries) and report the answer."""
        event = InspectionEvent(seq=0, t_capture=time.monotonic(), wall_time=utc_now(), decision="test",
                                score=None, threshold=None, reason="edgead signals test")
        try:
            status = self.post(event_json(event).encode())
        except urllib.error.HTTPError as err:
            raise OSError(f"{self.url} answered HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise OSError(f"cannot reach {self.url}: {err.reason}") from None
        return f"POST {self.url} -> HTTP {status}"

    def close(self, drain_s: float = 2.0) -> None:
        """Post for up to drain_s; what is left stays in the outbox (counted by undelivered())."""
        self.stop_sender(0.0 if self._unreachable else drain_s)
        self.close_outbox()


def _without_userinfo(url: urllib.parse.SplitResult) -> str:
    """The URL with `user:password@` taken out (urllib cannot post to it; the credentials go in a header)."""
    if url.username is None and url.password is None:
        return url.geturl()
    netloc = url.hostname or ""
    if ":" in netloc:                 # an IPv6 literal
        netloc = f"[{netloc}]"
    return url._replace(netloc=netloc + (f":{url.port}" if url.port else "")).geturl()
