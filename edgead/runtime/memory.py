"""How a long run's process uses memory: the number of glibc malloc arenas.

glibc gives threads their own malloc arenas (up to 8 per core), and a run has about 25 threads (capture,
inference, outputs, outbox flushers, recorder, HTTP). Memory freed in one arena is not reused by
another, so resident memory can creep up over a shift while Python's own heap stays flat; fewer arenas
trade that for some lock contention (docs/benchmarks.md, the soak, has both measured side by side).
`EDGEAD_MALLOC_ARENAS` sets the number (0: glibc's own default); other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8          # glibc's mallopt parameter number
DEFAULT_ARENAS = 0


def arenas_wanted() -> int:
    """The arena limit from EDGEAD_MALLOC_ARENAS (a whole number >= 0), else the default."""
    raw = os.environ.get("EDGEAD_MALLOC_ARENAS", "").strip()
    return int(raw) if raw.isdigit() else DEFAULT_ARENAS


def limit_malloc_arenas(n: int) -> bool:
    """Ask glibc for at most `n` arenas (before the run's threads start); False when not glibc or n is 0."""
    if n <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):      # musl, or no mallopt
        return False
