"""MQTT output (paho-mqtt v2 API): a JSON event per reject (or per part) for dashboards and MES.

The broker may go away; events must not. Every event goes into a bounded outbox first and is
published from the outbox's own thread only while connected, with at most `window` messages
unacknowledged. After a reconnect paho re-sends what was in flight before anything new leaves the
outbox, so events arrive in order and, with qos >= 1, none is lost up to the outbox size (a full
outbox drops the oldest and raises the alarm). "online" is published retained on the status topic
at every connect; the broker publishes the last will "offline" if edgead vanishes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, NamedTuple

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent, SinkHealth
from edgead.signals.base import SinkBase
from edgead.signals.config import MqttConfig, render_template, resolve_secret
from edgead.signals.log import event_json, utc_now
from edgead.signals.worker import Worker


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeADError("mqtt output: paho-mqtt is not installed", 'pip install "edgead[signals]"') from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise EdgeADError("mqtt output: paho-mqtt 1.x is installed; edgead needs the 2.x API",
                          'pip install "paho-mqtt>=2"')
    return mqtt


class Message(NamedTuple):
    topic: str
    payload: str
    qos: int
    retain: bool


class _Closing(Exception):
    """The sink is closing: stop waiting for the broker."""


class MqttSink(SinkBase):
    """Events to `topic`; "online"/"offline" on `status_topic`; alarms (retained JSON) on `alarm_topic`."""

    RESYNC_S = 10.0     # how long to let paho re-send in-flight messages after a reconnect

    def __init__(self, cfg: MqttConfig) -> None:
        super().__init__(cfg.name, f"{cfg.host}:{cfg.port}")
        mqtt = _paho()
        self.cfg = cfg
        self._mqtt = mqtt
        self.topic_status = render_template(cfg.status_topic, _BLANK, cfg.line)
        self.topic_alarm = render_template(cfg.alarm_topic, _BLANK, cfg.line)
        self._connected = threading.Event()
        self._epoch = 0             # +1 per connect: the outbox resyncs after each
        self._seen_epoch = 0
        self._inflight: list[Any] = []
        self._closing = False
        self._drop_reported = False
        self._alarm_state: str | None = None     # latest alarm JSON, (re)published retained at connect
        client_id = cfg.client_id or f"edgead-{cfg.line}-{socket.gethostname()}-{cfg.name}"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        clean_session=True)
        c.will_set(self.topic_status, "offline", qos=1, retain=True)
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
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        self.client = c
        self.outbox: Worker[Message] = Worker(self._deliver, maxlen=cfg.outbox, name=f"{cfg.name}-outbox",
                                              on_error=self._on_error, on_drop=self._on_drop)
        self._health = SinkHealth(False, f"connecting to broker {self.target}")
        c.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        c.loop_start()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._fail(f"broker {self.target} refused the connection: {reason}")
            return
        client.publish(self.topic_status, "online", qos=1, retain=True)
        if self._alarm_state is not None:
            client.publish(self.topic_alarm, self._alarm_state, qos=1, retain=True)
        self._drop_reported = False
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

    # ------------------------------------------------------------------ outbox (its own thread)

    def reject(self, event: InspectionEvent) -> None:
        if self.wants(event, self.cfg.per_part):
            topic = render_template(self.cfg.topic, event, self.cfg.line)
            self.outbox.put(Message(topic, event_json(event, line=self.cfg.line), self.cfg.qos, self.cfg.retain))

    def _ready(self) -> None:
        """Block until connected, resynced after a reconnect, and a window slot is free."""
        resync_until = 0.0
        while True:
            if self.outbox.closing:
                raise _Closing()
            if not self._connected.wait(0.05):
                continue
            self._inflight = [i for i in self._inflight if not i.is_published()]
            if self._epoch != self._seen_epoch:     # paho re-sends the old in-flight ones first
                resync_until = resync_until or time.monotonic() + self.RESYNC_S
                if self._inflight and time.monotonic() < resync_until:
                    time.sleep(0.002)
                    continue
                self._seen_epoch, resync_until = self._epoch, 0.0
            if len(self._inflight) < self.cfg.window:
                return
            time.sleep(0.001)

    def _deliver(self, msg: Message) -> None:
        mqtt = self._mqtt
        while True:
            try:
                self._ready()
            except _Closing:
                self.outbox.put(msg)        # stays undelivered: close() reports it
                return
            info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if info.rc == mqtt.MQTT_ERR_SUCCESS or (msg.qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
                if msg.qos > 0:             # paho keeps it and re-sends it after a reconnect
                    self._inflight.append(info)
                self.stats["sent"] += 1
                return
            self._connected.clear()          # qos 0 and the connection just went: wait and publish again
            time.sleep(0.01)

    def _on_error(self, msg: Message, err: BaseException) -> None:
        self.stats["failed"] += 1
        self._fail(f"publish to {msg.topic} failed: {err}")

    def _on_drop(self, msg: Message) -> None:
        self.stats["dropped"] += 1
        if not self._drop_reported:          # one alarm per outage, not one per event
            self._drop_reported = True
            self._notify("dropped", f"outbox full ({self.cfg.outbox}) while the broker {self.target} is away: "
                                    f"the oldest events are being dropped")

    # ------------------------------------------------------------------ alarms, test, close

    def alarm(self, sink_name: str, detail: str) -> None:
        """Retained alarm state: published now if connected, else at the next connect (latest wins)."""
        self._publish_alarm(json.dumps({"state": "alarm", "sink": sink_name, "detail": detail,
                                        "wall_time": utc_now()}))

    def clear_alarm(self) -> None:
        self._publish_alarm(json.dumps({"state": "ok", "wall_time": utc_now()}))

    def _publish_alarm(self, payload: str) -> None:
        self._alarm_state = payload          # not through the outbox: an alarm must never push out an event
        if self._connected.is_set():
            self.client.publish(self.topic_alarm, payload, qos=1, retain=True)

    def fire_test(self) -> str:
        """Publish one test event now and wait for the broker's acknowledgement."""
        timeout = self.cfg.connect_timeout_ms / 1000
        if not self._connected.wait(timeout):
            raise ConnectionError(self.health().detail or f"cannot connect to broker {self.target}")
        event = InspectionEvent(seq=0, t_capture=time.monotonic(), wall_time=utc_now(), decision="test",
                                score=None, threshold=None, reason="edgead signals test")
        topic = render_template(self.cfg.topic, event, self.cfg.line)
        info = self.client.publish(topic, event_json(event, line=self.cfg.line), qos=max(1, self.cfg.qos))
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"broker {self.target} did not acknowledge within {timeout:.1f} s")
        return f"published a test event on {topic}"

    def close(self, drain_s: float = 2.0) -> None:
        left = self.outbox.close(drain_s=drain_s if self._connected.is_set() else 0.0)
        if left:
            self.stats["unsent"] += len(left)
        self._closing = True
        if self._connected.is_set():
            info = self.client.publish(self.topic_status, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(1.0)
            except RuntimeError:
                pass
            self.client.disconnect()
        self.client.loop_stop()


_BLANK = InspectionEvent(seq=0, t_capture=0.0, wall_time="", decision="", score=None, threshold=None)
