"""MQTT output (paho-mqtt v2 API): a JSON event per reject (or per part) for dashboards and MES.

The broker may go away; events must not. Every event goes into the output's durable outbox first
(edgead.signals.outbox) and is published from the sender thread only while connected, with at most
`window` messages unacknowledged; a record leaves the outbox on the broker's PUBACK (qos >= 1) or
once written to the socket (qos 0). After a reconnect paho re-sends what was in flight before
anything new is published, so events arrive in order; what is left at close is sent first at the
next start (the event id lets a consumer drop a duplicate). "online" is published retained on the
status topic at every connect; the broker publishes the last will "offline" if edgead vanishes.
The alarm topic holds a retained JSON state: the alarm while one is active, else {"state": "ok"}
(set at connect and at a clean close, so an alarm of a past run does not stay).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent, SinkHealth
from edgead.signals.config import MqttConfig, render_template, resolve_secret
from edgead.signals.log import event_json, utc_now
from edgead.signals.outbox import Record
from edgead.signals.outbox_sink import OutboxSink

_logger = logging.getLogger("edgead.signals")


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeADError("mqtt output: paho-mqtt is not installed", 'pip install "edgead[signals]"') from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise EdgeADError("mqtt output: paho-mqtt 1.x is installed; edgead needs the 2.x API",
                          'pip install "paho-mqtt>=2"')
    return mqtt


def _client(mqtt: Any, cfg: MqttConfig, topic_status: str) -> Any:
    """The paho client, configured (will, credentials, TLS, reconnect delays), not yet connected."""
    client_id = cfg.client_id or f"edgead-{cfg.line}-{socket.gethostname()}-{cfg.name}"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                    clean_session=True)
    c.will_set(topic_status, "offline", qos=1, retain=True)
    password = resolve_secret("mqtt", cfg.name, "password", cfg.password, cfg.password_env)
    if cfg.username:
        c.username_pw_set(cfg.username, password or None)
    if cfg.tls:
        try:
            c.tls_set(ca_certs=cfg.ca_certs or None, certfile=cfg.certfile or None, keyfile=cfg.keyfile or None)
        except (OSError, ValueError) as err:
            raise EdgeADError(f"mqtt output '{cfg.name}': TLS set-up failed: {err}",
                              "check ca_certs / certfile / keyfile paths") from None
        c.tls_insecure_set(cfg.tls_insecure)
    # Typed int, but the delays are used as float seconds: sub-second reconnects work.
    c.reconnect_delay_set(min_delay=cfg.reconnect_min_ms / 1000,  # type: ignore[arg-type]
                          max_delay=cfg.reconnect_max_ms / 1000)  # type: ignore[arg-type]
    c.max_inflight_messages_set(cfg.window)
    return c


def ok_state() -> str:
    return json.dumps({"state": "ok", "wall_time": utc_now()})


class _Closing(Exception):
    """The sink is closing: stop waiting for the broker."""


class MqttSink(OutboxSink):
    """Events to `topic`; "online"/"offline" on `status_topic`; alarms (retained JSON) on `alarm_topic`."""

    RESYNC_S = 10.0     # how long to let paho re-send in-flight messages after a reconnect

    def __init__(self, cfg: MqttConfig, outbox_dir: str | Path | None = None) -> None:
        mqtt = _paho()
        topic_status = render_template(cfg.status_topic, _BLANK, cfg.line)
        client = _client(mqtt, cfg, topic_status)          # a bad secret or TLS file: before the outbox is opened
        super().__init__(cfg, f"{cfg.host}:{cfg.port}", outbox_dir, readahead=cfg.outbox)
        self.cfg = cfg
        self._mqtt = mqtt
        self.topic_status = topic_status
        self.topic_alarm = render_template(cfg.alarm_topic, _BLANK, cfg.line)
        self._connected = threading.Event()
        self._epoch = 0             # +1 per connect: the sender resyncs after each
        self._seen_epoch = 0
        self._ack_lock = threading.Lock()
        self._mids: dict[int, int] = {}     # paho message id -> outbox record, published, not acknowledged
        self._early: set[int] = set()       # acknowledged before publish() returned its id
        self._control: set[int] = set()     # status / alarm messages: not outbox records
        self._closing = False
        self._alarm_state: str | None = None     # the active alarm's JSON, (re)published retained at connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        self.client = client
        self._health = SinkHealth(False, f"connecting to broker {self.target}")
        try:
            self.start_sender()
            client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
            client.loop_start()
        except BaseException:
            self.stop_sender(0.0)
            self.close_outbox()
            raise

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._fail(f"broker {self.target} refused the connection: {reason}")
            return
        self._publish_control(self.topic_status, "online")
        self._publish_control(self.topic_alarm, self._alarm_state or ok_state())
        self._epoch += 1
        self._connected.set()
        self._ok()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._closing:    # a refused connect was reported by _on_connect
            self._fail(f"lost the broker {self.target} ({reason}); events wait in the outbox")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._fail(f"cannot connect to broker {self.target}")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        """PUBACK (qos 1), PUBCOMP (qos 2), or written to the socket (qos 0): the record may leave the outbox."""
        with self._ack_lock:
            if mid in self._control:
                self._control.discard(mid)
                return
            n = self._mids.pop(mid, None)
            if n is None:
                self._early.add(mid)
                return
        self._acked(n)

    def _register(self, mid: int, n: int | None) -> None:
        """After publish() returned: match the id with its acknowledgement (which may have come first)."""
        with self._ack_lock:
            early = mid in self._early
            self._early.discard(mid)
            if not early and n is None:
                self._control.add(mid)
            elif not early and n is not None:
                self._mids[mid] = n
        if early and n is not None:
            self._acked(n)

    def _abandon_inflight(self) -> None:
        """paho did not get the old in-flight messages acknowledged after a reconnect: stop waiting for
        them in this run (they stay in the outbox, so the next start sends them again)."""
        with self._ack_lock:
            stale = list(self._mids)
            self._control.update(stale)          # a late acknowledgement of one of them is ignored
            self._mids.clear()
        self.stats["abandoned"] += len(stale)
        self._skipped += len(stale)
        _logger.warning("output %s: %d messages unacknowledged %.0f s after a reconnect: kept in the outbox for the "
                        "next start", self.name, len(stale), self.RESYNC_S)

    def _publish_control(self, topic: str, payload: str) -> Any:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        self._register(info.mid, None)
        return info

    # ------------------------------------------------------------------ sender thread

    def reject(self, event: InspectionEvent) -> None:
        if self.wants(event, self.cfg.per_part):
            topic = render_template(self.cfg.topic, event, self.cfg.line)
            self._append(event, {"topic": topic, "payload": event_json(event, line=self.cfg.line)})

    def _ready(self) -> None:
        """Block until connected, resynced after a reconnect, and a window slot is free."""
        resync_until = 0.0
        while True:
            if self._stop_sending.is_set():
                raise _Closing()
            if not self._connected.wait(0.05):
                continue
            with self._ack_lock:
                inflight = len(self._mids)
            if self._epoch != self._seen_epoch:     # paho re-sends the old in-flight ones first
                resync_until = resync_until or time.monotonic() + self.RESYNC_S
                if inflight and time.monotonic() < resync_until:
                    time.sleep(0.002)
                    continue
                if inflight:
                    self._abandon_inflight()
                self._seen_epoch, resync_until = self._epoch, 0.0
            if inflight < self.cfg.window:
                return
            time.sleep(0.001)

    def _send(self, rec: Record) -> None:
        mqtt, qos = self._mqtt, self.cfg.qos
        while True:
            try:
                self._ready()
            except _Closing:
                return                      # stays in the outbox: close() counts it, the next start sends it
            info = self.client.publish(rec.msg["topic"], rec.msg["payload"], qos=qos, retain=self.cfg.retain)
            if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
                self._register(info.mid, rec.n)     # paho keeps a qos >= 1 one and re-sends it after a reconnect
                self.stats["sent"] += 1
                return
            if info.rc != mqtt.MQTT_ERR_NO_CONN:
                self._fail(f"publish to {rec.msg['topic']} failed: {mqtt.error_string(info.rc)}")
            self._connected.clear()          # the connection just went: wait and publish again
            time.sleep(0.01)

    # ------------------------------------------------------------------ alarms, test, close

    def alarm(self, sink_name: str, detail: str) -> None:
        """Retained alarm state: published now if connected, else at the next connect (latest wins)."""
        self._alarm_state = json.dumps({"state": "alarm", "sink": sink_name, "detail": detail, "wall_time": utc_now()})
        self._publish_alarm(self._alarm_state)

    def clear_alarm(self) -> None:
        self._alarm_state = None
        self._publish_alarm(ok_state())

    def _publish_alarm(self, payload: str) -> None:
        if self._connected.is_set():         # not through the outbox: an alarm is a state, not an event
            self._publish_control(self.topic_alarm, payload)

    def fire_test(self) -> str:
        """Publish one test event now (not through the outbox) and wait for the broker's acknowledgement."""
        timeout = self.cfg.connect_timeout_ms / 1000
        if not self._connected.wait(timeout):
            raise ConnectionError(self.health().detail or f"cannot connect to broker {self.target}")
        event = InspectionEvent(seq=0, t_capture=time.monotonic(), wall_time=utc_now(), decision="test",
                                score=None, threshold=None, reason="edgead signals test")
        topic = render_template(self.cfg.topic, event, self.cfg.line)
        info = self.client.publish(topic, event_json(event, line=self.cfg.line), qos=max(1, self.cfg.qos))
        self._register(info.mid, None)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"broker {self.target} did not acknowledge within {timeout:.1f} s")
        return f"published a test event on {topic}"

    def close(self, drain_s: float = 2.0) -> None:
        """Deliver for up to drain_s; then alarm topic ok and status offline (retained), and disconnect.

        What the broker has not acknowledged stays in the outbox (counted by undelivered())."""
        self.stop_sender(drain_s if self._connected.is_set() else 0.0)
        self._closing = True
        if self._connected.is_set():
            infos = [self._publish_control(self.topic_alarm, ok_state()),
                     self._publish_control(self.topic_status, "offline")]
            for info in infos:
                try:
                    info.wait_for_publish(1.0)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
        self.client.loop_stop()
        self.close_outbox()


_BLANK = InspectionEvent(seq=0, t_capture=0.0, wall_time="", decision="", score=None, threshold=None)
