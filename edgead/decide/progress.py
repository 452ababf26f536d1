"""Progress of the long steps, and how much the verbs say (`-q` / `-v`): one place for both, so a bar
and a message never garble each other's line.

- On a terminal: one bar line on stderr, redrawn in place (`\\r`) at most 10 times a second.
- Elsewhere (a CI log, a pipe, a file): a plain line each 10 % or every 30 s, never a `\\r`.
- Quiet: no bar and no step messages; warnings, errors and the verb's result still print.
Each bar ends with one final line (`100%` and the time it took). Standard library only: the edge
verbs and the workstation stages (training, export, the demo) all use it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, TextIO, TypeVar

QUIET, NORMAL, VERBOSE = 0, 1, 2
TTY_INTERVAL_S = 0.1       # a terminal bar redraws at most 10 times a second
LOG_INTERVAL_S = 30.0      # not a terminal: a line at least this often while something moves ...
LOG_STEP = 0.1             # ... and one each 10 %
BAR_WIDTH = 24

T = TypeVar("T")
_level = [NORMAL]
_drawn: List["Progress"] = []        # the terminal bar whose line is on the screen now (at most one)


def set_verbosity(level: int) -> None:
    """QUIET, NORMAL or VERBOSE for everything that follows (the `edgead` command sets it once)."""
    _level[0] = level


def verbosity() -> int:
    return _level[0]


def is_quiet() -> bool:
    return _level[0] <= QUIET


def say(line: str, stream: Optional[TextIO] = None) -> None:
    """Print a line (stdout by default) without garbling a terminal bar: its line is wiped first and
    the bar redraws below at its next update."""
    clear_line()
    print(line, file=stream if stream is not None else sys.stdout, flush=True)


def info(line: str) -> None:
    """A step's message: what is being done; not shown with -q."""
    if not is_quiet():
        say(line)


def warn(line: str) -> None:
    """Warnings and errors: always, on stderr."""
    say(line, sys.stderr)


def clear_line() -> None:
    for bar in list(_drawn):
        bar.wipe()


def duration(seconds: float) -> str:
    """A time people read at a glance: 8.2 s, 42 s, 3.5 min, 1.2 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False


class Progress:
    """A bar for `total` units of work: `update(n)` as they are done, `close()` (or the `with` block's
    end) prints the final line. Writes to sys.stderr as it is at each line (tests capture it)."""

    def __init__(self, label: str, total: int, unit: str = "", *, initial: int = 0, enabled: bool = True,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.done = self._initial = int(initial)       # work done before (a resumed run): not in the rate
        self.note = ""
        self._stream, self._clock = stream, clock
        self.started = clock()
        self._shown = enabled and not is_quiet()
        self._tty = self._shown and _is_tty(self._out())
        self._last_draw = -math.inf
        self._last_line = self.started
        self._logged_step = int(self.done / self.total / LOG_STEP + 1e-9) if self.total else 0  # last 10 % step logged
        self._width = 0                # characters of the bar line on the screen (a terminal)
        self.closed = False

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)

    def update(self, n: int = 1, note: Optional[str] = None) -> None:
        """`n` more units done; `note` (e.g. "epoch 3/20, loss 0.012") is shown beside the count."""
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        if note is not None:
            self.note = note
        if not self._shown or self.closed:
            return
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= TTY_INTERVAL_S:
                self._draw(now)
            return
        step = int(self.done / self.total / LOG_STEP + 1e-9) if self.total else 0
        if self.done < self.total and (step > self._logged_step or now - self._last_line >= LOG_INTERVAL_S):
            self._logged_step = max(step, self._logged_step)
            self._line(self._text(now), now)

    def close(self, failed: bool = False) -> None:
        """The final line: how far it got and how long it took; after a failure only the bar's line is
        wiped (the error says the rest)."""
        if self.closed:
            return
        self.closed = True
        if not self._shown:
            return
        if failed:
            if self._tty:
                self.wipe()
            return
        now = self._clock()
        text = f"{self.label}: {self._count()} in {duration(now - self.started)}" + (f" ({self.note})" if self.note else "")
        if self._tty:
            self._draw(now, final=text)
        else:
            self._line(text, now)

    def _count(self) -> str:
        pct = 100 * self.done // self.total if self.total else 100
        unit = f" {self.unit}" if self.unit else ""
        return f"{pct}% ({self.done}/{self.total}{unit})"

    def _eta(self, now: float) -> str:
        elapsed, done = now - self.started, self.done - self._initial
        if done <= 0 or not self.total or self.done >= self.total:
            return ""
        return f", {duration(elapsed / done * (self.total - self.done))} left"

    def _text(self, now: float) -> str:
        note = f", {self.note}" if self.note else ""
        return f"{self.label}: {self._count()}, {duration(now - self.started)}{self._eta(now)}{note}"

    def _line(self, text: str, now: float) -> None:
        clear_line()
        print(text, file=self._out(), flush=True)
        self._last_line = now

    def _draw(self, now: float, final: Optional[str] = None) -> None:
        """Redraw the terminal line in place; `final` ends it with a newline."""
        for other in list(_drawn):
            if other is not self:
                other.wipe()
        if final is None:
            filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            text = f"{self.label} [{bar}] {self._count()}, {duration(now - self.started)}{self._eta(now)}" \
                   + (f", {self.note}" if self.note else "")
        else:
            text = final
        pad = " " * max(0, self._width - len(text))
        out = self._out()
        out.write("\r" + text + pad + ("\n" if final is not None else ""))
        out.flush()
        self._last_draw = now
        if final is None:
            self._width = len(text)
            if self not in _drawn:
                _drawn.append(self)
        else:
            self._forget()

    def wipe(self) -> None:
        """Blank the bar's terminal line (a message or an error is about to take it)."""
        if self._width:
            out = self._out()
            out.write("\r" + " " * self._width + "\r")
            out.flush()
        self._forget()
        self._last_draw = -math.inf     # redraw at the next update

    def _forget(self) -> None:
        self._width = 0
        if self in _drawn:
            _drawn.remove(self)


def track(items: Iterable[T], label: str, total: Optional[int] = None, unit: str = "") -> Iterator[T]:
    """Iterate with a bar: one unit per item."""
    seq = items if total is not None else list(items)
    n = total if total is not None else len(seq)  # type: ignore[arg-type]
    with Progress(label, n, unit) as bar:
        for item in seq:
            yield item
            bar.update(1)
