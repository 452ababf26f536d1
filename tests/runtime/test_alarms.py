"""The alarm board's lifecycle: conditions stay until cleared or acknowledged, events expire, counts
only grow; and the acknowledgement over HTTP (loopback or bearer token, 403 otherwise) with its client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

import edgead.runtime.http as http_mod
from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec
from edgead.runtime.alarms import AlarmBoard
from edgead.runtime.config import from_dict
from edgead.runtime.http import HttpView, LiveView, ack_alarms, ack_allowed, is_loopback

TOKEN = "0123456789abcdef0123"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_conditions_stay_until_cleared_or_acknowledged():
    emptied: list[int] = []
    board = AlarmBoard(on_empty=lambda: emptied.append(1))
    assert board.raise_("camera_lost", "camera lost: gige:1") is True
    assert board.raise_("camera_lost", "camera lost: gige:1 again") is False     # still the same episode
    assert board.raise_("output_failure:plc", "output plc: timeout") is True
    active = board.active()
    assert [a["key"] for a in active] == ["camera_lost", "output_failure:plc"]
    assert active[0] == {"key": "camera_lost", "reason": "camera lost: gige:1 again", "since": active[0]["since"],
                         "count": 2, "kind": "condition"}
    assert board.clear("camera_lost") is True and board.clear("camera_lost") is False
    assert emptied == [] and board.is_active()
    assert board.ack("nope") == [] and board.ack("output_failure:plc") == ["output_failure:plc"]
    assert emptied == [1] and not board.is_active() and board.active() == []
    assert board.counts() == {"camera_lost": 2, "output_failure:plc": 1}            # since start: never reset
    board.raise_("camera_lost", "again")
    assert board.counts()["camera_lost"] == 3 and board.active()[0]["count"] == 3
    assert board.ack() == ["camera_lost"] and board.ack() == [] and emptied == [1, 1]


def test_events_expire_after_their_hold_time_or_on_ack():
    clock = Clock()
    emptied: list[int] = []
    board = AlarmBoard(event_hold_s=60.0, clock=clock, on_empty=lambda: emptied.append(1))
    board.raise_("safe_action_deadline", "safe action (deadline) for part seq 3", event=True)
    clock.t += 50
    board.raise_("safe_action_deadline", "safe action (deadline) for part seq 9", event=True)  # holds it longer
    board.raise_("camera_lost", "camera lost")
    clock.t += 59
    assert [a["key"] for a in board.active()] == ["safe_action_deadline", "camera_lost"]
    assert board.active()[0]["kind"] == "event" and "seq 9" in board.active()[0]["reason"]
    clock.t += 1
    assert board.expire() == ["safe_action_deadline"] and emptied == []       # the condition stays
    assert [a["key"] for a in board.active()] == ["camera_lost"]
    board.clear("camera_lost")
    assert emptied == [1]
    board.raise_("frame_lost", "sequence jump", event=True)
    assert board.ack() == ["frame_lost"] and emptied == [1, 1]
    assert board.counts() == {"camera_lost": 1, "frame_lost": 1, "safe_action_deadline": 2}


def test_a_condition_raised_over_an_event_does_not_expire():
    clock = Clock()
    board = AlarmBoard(event_hold_s=1.0, clock=clock)
    board.raise_("x", "an event", event=True)
    board.raise_("x", "now a condition")
    clock.t += 10
    assert [a["key"] for a in board.active()] == ["x"] and board.active()[0]["kind"] == "condition"


def test_the_board_is_thread_safe():
    board = AlarmBoard()

    def work(k: int) -> None:
        for i in range(500):
            board.raise_(f"k{k % 3}", "r", event=bool(i % 2))
            if i % 7 == 0:
                board.clear(f"k{k % 3}")
            board.active()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert board.counts() == {"k0": 1000, "k1": 1000, "k2": 1000}


# ---------------------------------------------------------------- who may acknowledge


def test_ack_is_allowed_from_loopback_or_with_the_token():
    for host in ("127.0.0.1", "127.8.0.3", "::1", "::ffff:127.0.0.1", "localhost"):
        assert is_loopback(host) and ack_allowed(host, None, None), host
    for host in ("192.0.2.7", "10.0.0.1", "::ffff:192.0.2.7", "fe80::1%eth0", "example.com"):
        assert not is_loopback(host), host
    remote = "192.0.2.7"
    assert not ack_allowed(remote, None, None)
    assert not ack_allowed(remote, f"Bearer {TOKEN}", None)          # no token configured: loopback only
    assert not ack_allowed(remote, None, TOKEN)
    assert not ack_allowed(remote, "Bearer wrong", TOKEN)
    assert not ack_allowed(remote, f"Basic {TOKEN}", TOKEN)
    assert ack_allowed(remote, f"Bearer {TOKEN}", TOKEN) and ack_allowed(remote, f"bearer  {TOKEN}", TOKEN)


def test_http_token_config_is_checked_and_never_shown():
    assert from_dict({"http": {"listen": "8080", "token": TOKEN}}).http.token == TOKEN
    with pytest.raises(EdgeADError, match="http.token") as e:
        from_dict({"http": {"token": "short"}})
    assert "short" not in str(e.value)


@pytest.fixture
def server():
    """A real HttpView on a loopback port with an alarm board behind /health and POST /alarms/ack."""
    board = AlarmBoard()
    acks: list[str | None] = []

    def ack(key):
        acks.append(key)
        return board.ack(key)

    def health():
        return {"status": "alarm" if board.is_active() else "ok", "alarms": board.active(),
                "alarm_counts": board.counts()}

    view = HttpView("127.0.0.1", 0, LiveView(PreprocessSpec(), (0.0, 1.0)), health, lambda: "", ack=ack, token=TOKEN)
    view.start()
    try:
        yield view, board, acks, "http://%s:%d" % view.address
    finally:
        view.stop()


def _post(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _health(base: str) -> dict:
    with urllib.request.urlopen(base + "/health", timeout=5) as r:
        return json.loads(r.read())


def test_ack_over_http_from_loopback(server):
    view, board, acks, base = server
    board.raise_("camera_lost", "camera lost")
    board.raise_("output_failure:plc", "plc down")
    assert _health(base)["status"] == "alarm"
    assert ack_alarms(base, key="camera_lost") == ["camera_lost"]
    assert [a["key"] for a in _health(base)["alarms"]] == ["output_failure:plc"]
    assert ack_alarms(base + "/") == ["output_failure:plc"] and ack_alarms(base) == []
    h = _health(base)
    assert h["status"] == "ok" and h["alarms"] == [] and h["alarm_counts"] == {"camera_lost": 1,
                                                                               "output_failure:plc": 1}
    assert acks == ["camera_lost", None, None]
    assert _post(base + "/alarms/nope")[0] == 404


def test_a_remote_ack_needs_the_token(server, monkeypatch):
    view, board, acks, base = server
    monkeypatch.setattr(http_mod, "is_loopback", lambda host: False)   # every client now looks remote
    board.raise_("camera_lost", "camera lost")
    code, body = _post(base + "/alarms/ack")
    assert code == 403 and "Bearer" in body["error"] and acks == []
    assert _post(base + "/alarms/ack", {"Authorization": "Bearer wrong-token-000000"})[0] == 403
    with pytest.raises(EdgeADError, match="refused") as e:
        ack_alarms(base, token="wrong-token-000000")
    assert "--token" in e.value.hint
    assert board.is_active("camera_lost")
    assert ack_alarms(base, token=TOKEN) == ["camera_lost"] and not board.is_active()


def test_ack_client_errors_are_one_message():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(EdgeADError, match=f"cannot reach http://127.0.0.1:{port}/alarms/ack") as e:
        ack_alarms(f"127.0.0.1:{port}", timeout_s=2)
    assert "--url" in e.value.hint


def test_the_alarm_gauge_follows_the_board():
    from edgead.runtime.telemetry import RunMetrics

    m = RunMetrics()
    board = AlarmBoard()
    m.alarms_active.set_function(lambda: float(len(board.active())))
    board.raise_("a", "x")
    board.raise_("b", "y")
    assert "edgead_alarms_active 2.0" in m.render()
    board.ack()
    text = m.render()
    assert "# TYPE edgead_alarms_active gauge" in text and "edgead_alarms_active 0.0" in text
    assert np.isfinite(m.alarms_active.value())


def test_the_alarm_ack_cli(server, capsys):
    """`edgead alarm ack --url HOST:PORT [--key K]`: what it acknowledged, or one message and exit 2."""
    from edgead.cli import main

    view, board, acks, base = server
    board.raise_("camera_lost", "camera lost")
    board.raise_("output_failure:plc", "plc down")
    assert main(["alarm", "ack", "--url", base.removeprefix("http://"), "--key", "camera_lost"]) == 0
    assert "acknowledged: camera_lost" in capsys.readouterr().out
    assert main(["alarm", "ack", "--url", base]) == 0 and "output_failure:plc" in capsys.readouterr().out
    assert main(["alarm", "ack", "--url", base]) == 0 and "no active alarm" in capsys.readouterr().out
    view.stop()
    assert main(["alarm", "ack", "--url", base]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
