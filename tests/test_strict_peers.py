"""EDGEAD_REQUIRE_PEERS=1 (set by .ci/run) turns a skipped test into a failure, except for tests that
need hardware CI cannot have: checked on a small inner suite run with the project's own conftest."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
INNER = '''
import pytest

def test_peer_missing():
    pytest.skip("the mosquitto binary is not installed")

def test_library_missing():
    pytest.importorskip("a_module_that_is_not_installed_anywhere")

@pytest.mark.hardware
def test_needs_a_gpu():
    pytest.skip("no CUDA device")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False

def test_passes():
    assert True
'''


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner=INNER)
    return pytester


def test_without_the_variable_skips_stay_skips(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEAD_REQUIRE_PEERS", raising=False)
    result = inner.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    result.stdout.fnmatch_lines(["*the mosquitto binary is not installed*"])


def test_with_the_variable_a_missing_peer_fails(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEAD_REQUIRE_PEERS", "1")
    result = inner.runpytest("-rfs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_peer_missing*", "*FAILED*test_library_missing*"])
    result.stdout.fnmatch_lines(["*every peer must be installed: the mosquitto binary is not installed*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_with_the_variable_a_module_level_skip_fails(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_mod='import pytest\npytest.importorskip("no_such_module_here")\n'
                                 'def test_x():\n    pass\n')
    monkeypatch.setenv("EDGEAD_REQUIRE_PEERS", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*every peer must be installed*no_such_module_here*"])


def test_ci_sets_the_variable() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "export EDGEAD_REQUIRE_PEERS=1" in ci
