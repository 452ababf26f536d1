"""Secrets never leave the program in text: URL passwords and every secret a config resolved are
written as *** in EdgeADError messages and hints and in every log line (edgead.errors)."""

from __future__ import annotations

import logging

from edgead import cli
from edgead.errors import EdgeADError, RedactingFilter, redact_text, register_secret
from edgead.runtime.config import from_dict


def test_url_passwords_and_registered_secrets_are_redacted():
    assert redact_text("mqtt://plc:pw1@10.0.0.5:1883 down") == "mqtt://plc:***@10.0.0.5:1883 down"
    assert redact_text("user@example.com wrote") == "user@example.com wrote"          # not a URL's password
    register_secret("tok-55aa19")
    register_secret("abc")                                                           # too short: a word, not a secret
    assert redact_text("POST refused: Bearer tok-55aa19") == "POST refused: Bearer ***"
    assert redact_text("abc def") == "abc def"


def test_an_error_message_and_its_hint_never_carry_a_secret():
    register_secret("hint-secret-71")
    err = EdgeADError("cannot reach http://u:pw-9@h/x", "check the token hint-secret-71")
    assert err.message == "cannot reach http://u:***@h/x" and err.hint == "check the token ***"
    assert "pw-9" not in str(err)


def test_a_loaded_run_config_registers_its_secrets_for_every_log_line(caplog):
    from_dict({"outputs": [{"type": "webhook", "url": "http://h/x", "token": "cfg-token-c0ffee"}],
               "http": {"listen": "127.0.0.1:0", "token": "view-token-beef01"}})
    record = logging.LogRecord("lib", logging.WARNING, __file__, 1, "sent %s and %s", ("cfg-token-c0ffee",
                                                                                      "view-token-beef01"), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "sent *** and ***"


def test_the_cli_log_handler_redacts_library_lines(capsys):
    root = logging.getLogger()
    before = list(root.handlers)
    cli._log_to_stderr()
    cli._log_to_stderr()                                   # once, however often main() runs in a process
    added = [h for h in root.handlers if h not in before]
    try:
        assert len(added) <= 1
        register_secret("lib-secret-5e5e")
        logging.getLogger("some.library").warning("connecting with lib-secret-5e5e")
        assert capsys.readouterr().err.strip().endswith("connecting with ***")
    finally:
        for h in added:
            root.removeHandler(h)
