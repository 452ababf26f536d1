"""The gpiod module (libgpiod v2 bindings), loaded only when a gpio output or encoder is configured.

Shared by the gpio reject output and the gpio encoder counter, so both name the same fix when
the library is missing or is the old v1 binding.
"""

from __future__ import annotations

from typing import Any

from edgead.errors import EdgeADError

INSTALL_GPIOD = ('pip install "edgead[signals]" (installs gpiod>=2.1, the libgpiod v2 bindings; '
                 "distribution packages named python3-libgpiod are v2 only on recent releases, e.g. Debian 13, Ubuntu 24.04)")


def import_gpiod() -> Any:
    """The gpiod module (v2 API), or an EdgeADError saying how to install it."""
    try:
        import gpiod
    except ImportError:
        raise EdgeADError("gpio output: the gpiod Python module is not installed", INSTALL_GPIOD) from None
    if not hasattr(gpiod, "request_lines"):
        raise EdgeADError("gpio output: the installed gpiod module is the old libgpiod v1 binding",
                          'remove it (e.g. apt remove python3-libgpiod) and pip install "gpiod>=2.1"')
    return gpiod
