"""edgead.runtime.memory: the malloc arena limit a long run asks glibc for."""

from __future__ import annotations

import platform

import pytest

from edgead.runtime import memory


@pytest.mark.parametrize("raw, expected", [("", memory.DEFAULT_ARENAS), ("2", 2), (" 4 ", 4), ("0", 0),
                                           ("-1", memory.DEFAULT_ARENAS), ("two", memory.DEFAULT_ARENAS)])
def test_the_arena_limit_comes_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("EDGEAD_MALLOC_ARENAS", raw)
    assert memory.arenas_wanted() == expected


def test_zero_leaves_glibc_alone_and_a_limit_is_taken_on_glibc():
    assert memory.limit_malloc_arenas(0) is False
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: nothing to limit")   # pragma: no cover - the CI machine is glibc
    assert memory.limit_malloc_arenas(8) is True     # 8: the default-sized limit, harmless for the suite
