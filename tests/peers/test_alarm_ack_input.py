"""The operator's acknowledge button on the PLC (edgead.signals.ack_input): presses against a real pymodbus
server (rising edges only); an unreachable input is reported once and its return too."""

from __future__ import annotations

import threading

import pytest
from signals_fixtures import modbus_server, wait_for  # noqa: F401

from edgead.errors import EdgeADError
from edgead.runtime.config import from_dict
from edgead.signals.ack_input import AckInput, AckInputConfig


class Calls:
    def __init__(self) -> None:
        self.acks, self.problems, self.backs = 0, [], 0
        self.lock = threading.Lock()

    def ack(self) -> None:
        with self.lock:
            self.acks += 1

    def back(self) -> None:
        self.backs += 1


def _input(peer, calls: Calls, **kw) -> AckInput:
    cfg = AckInputConfig(host="127.0.0.1", port=peer.port, poll_ms=20, timeout_ms=300, **{"coil": 7, **kw})
    return AckInput(cfg, on_ack=calls.ack, on_problem=calls.problems.append, on_back=calls.back).start()


def test_each_press_acknowledges_once_and_a_bit_on_at_start_does_not(modbus_server):
    modbus_server.set_coil(7, True)                 # held (or stuck) when edgead starts
    calls = Calls()
    ack = _input(modbus_server, calls)
    try:
        assert wait_for(lambda: ack.link.connected, 3)
        threading.Event().wait(0.2)
        assert calls.acks == 0
        for press in range(1, 4):
            modbus_server.set_coil(7, False)
            threading.Event().wait(0.1)
            modbus_server.set_coil(7, True)
            assert wait_for(lambda: calls.acks == press, 3), (calls.acks, press)
        threading.Event().wait(0.2)
        assert calls.acks == 3 == ack.presses      # held on: still three presses
    finally:
        ack.close()


class OutageLink:
    """The PLC's answers, switched off and on by the test (a stopped pymodbus server may go on serving the
    connections it already has, so an outage is simulated at the link)."""

    def __init__(self) -> None:
        self.down, self.bit, self.connected = False, False, True
        self.last_error = ""

    def connect(self) -> bool:
        self.last_error = "cannot connect to 127.0.0.1:502" if self.down else ""
        return not self.down

    def call(self, method: str, address: int, count: int = 1):
        if self.down:
            raise ConnectionError("connection to 127.0.0.1:502 lost")
        return type("Reply", (), {"bits": [self.bit]})()

    def close(self) -> None:
        pass


def test_an_unreachable_input_is_one_problem_and_its_return_is_reported():
    calls, link = Calls(), OutageLink()
    cfg = AckInputConfig(host="127.0.0.1", coil=7, poll_ms=10)
    ack = AckInput(cfg, on_ack=calls.ack, on_problem=calls.problems.append, on_back=calls.back, link=link).start()
    try:
        threading.Event().wait(0.1)
        link.down = True
        assert wait_for(lambda: calls.problems, 3)
        threading.Event().wait(0.2)
        assert calls.problems == ["the alarm acknowledge input 127.0.0.1:502 unit 1 coil 7 does not answer: "
                                  "cannot connect to 127.0.0.1:502"]
        link.bit, link.down = True, False          # back, with the button held: the first answer is no press
        assert wait_for(lambda: calls.backs == 1, 3)
        threading.Event().wait(0.1)
        assert calls.acks == 0
        link.bit = False
        threading.Event().wait(0.1)
        link.bit = True
        assert wait_for(lambda: calls.acks == 1, 3)
    finally:
        ack.close()


@pytest.mark.parametrize("section, message", [
    ({"type": "gpio", "host": "h", "coil": 1}, "'alarm_ack.type'"),
    ({"host": "h"}, "exactly one of 'coil' or 'discrete_input'"),
    ({"host": "h", "coil": 1, "discrete_input": 2}, "exactly one of 'coil' or 'discrete_input'"),
    ({"coil": 1}, "'alarm_ack.host'"),
    ({"host": "h", "coil": 1, "poll_ms": 1}, "10 to 5000 ms"),
    ({"host": "h", "coil": 1, "pin": 3}, "unknown key 'alarm_ack.pin'"),
])
def test_a_bad_alarm_ack_section_names_its_key(section, message):
    with pytest.raises(EdgeADError) as err:
        from_dict({"alarm_ack": section})
    assert message in str(err.value)
