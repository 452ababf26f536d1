"""The gpiod module (libgpiod v2 bindings), loaded only when a gpio output or encoder is configured.

Shared by the gpio reject output and the gpio encoder counter, so both name the same fix when
the library is missing or is the old v1 binding.
"""

from __future__ import annotations

import sys
from typing import Any

from edgead.errors import EdgeADError

INSTALL_GPIOD = ('pip install "edgead[signals]" (installs gpiod>=2.1, the libgpiod v2 bindings; '
                 "distribution packages named python3-libgpiod are v2 only on recent releases, e.g. Debian 13, Ubuntu 24.04)")
# gpiod 2.x requires Python 3.9, so on Python 3.8 (JetPack 5) the extra leaves it out: say what works there.
NO_GPIOD_ON_38 = ('gpiod>=2.1 (the libgpiod v2 bindings) needs Python 3.9+, so "edgead[signals]" leaves it out on '
                  "this Python: for a reject output use backend: jetson (Jetson.GPIO, part of JetPack); for an "
                  "encoder use source: modbus (the PLC's counter), or run edgead on Python 3.9+")


def import_gpiod() -> Any:
    """The gpiod module (v2 API), or an EdgeADError saying how to install it."""
    try:
        import gpiod
    except ImportError:
        hint = INSTALL_GPIOD if sys.version_info >= (3, 9) else NO_GPIOD_ON_38
        raise EdgeADError("gpio output: the gpiod Python module is not installed", hint) from None
    if not hasattr(gpiod, "request_lines"):
        hint = ('remove it (e.g. apt remove python3-libgpiod) and pip install "gpiod>=2.1"'
                if sys.version_info >= (3, 9) else NO_GPIOD_ON_38)
        raise EdgeADError("gpio output: the installed gpiod module is the old libgpiod v1 binding", hint)
    return gpiod
