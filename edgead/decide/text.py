"""How the decide stage words what it tells people: rates as percentages, warnings on stderr.

One place, so the summary, the record's warnings, the figure and the drift report print a rate the
same way.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

Log = Callable[[str], None]


def stderr(line: str) -> None:
    """The default sink for warnings: standard error, so they never mix with a verb's report."""
    print(line, file=sys.stderr)


def pct(rate: float | None) -> str:
    """A rate as a percentage to 3 significant digits; "n/a" when there is none."""
    return "n/a" if rate is None or not math.isfinite(rate) else f"{rate * 100:.3g}%"
