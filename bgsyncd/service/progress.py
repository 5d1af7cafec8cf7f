"""``once``'s progress display: a bar on a terminal, one summary at the end.

The bar is the terminal's last line, drawn through :func:`logs.set_status_line`
so log lines scroll above it and never tear it. Without a terminal there is no
bar, only the summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from bgsyncd.logs import keep_status_line, set_status_line

BAR_WIDTH = 24


def render(finished: int, total: int, waiting: str, columns: int) -> str:
    """One bar line, cut to fit in ``columns`` - 1 (a full line would wrap on redraw)."""
    filled = BAR_WIDTH * finished // total if total else 0
    line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {finished}/{total}"
    if waiting:
        line += f"  {waiting}"
    return line[: max(1, columns - 1)]


def summary(finished: int, total: int, ending: str) -> str:
    """The line printed at the end of a run."""
    line = f"once: {finished}/{total} files finished"
    return f"{line}; {ending}" if ending else line


class Progress:
    """Shows the bar while a run goes on (terminal only), then the summary."""

    def __init__(self, terminal: TextIO | None, out: TextIO = sys.stdout) -> None:
        self._terminal = terminal
        self._out = out
        self._last = ""

    @classmethod
    def for_stderr(cls, enabled: bool) -> Progress:
        """A bar on stderr when ``enabled`` and stderr is a terminal."""
        return cls(sys.stderr if enabled and sys.stderr.isatty() else None)

    def show(self, finished: int, total: int, waiting: str) -> None:
        """Draw the bar (nothing without a terminal)."""
        if self._terminal is None:
            return
        line = render(finished, total, waiting, self._columns())
        if line != self._last:
            self._last = line
            set_status_line(line)

    def finish(self, finished: int, total: int, ending: str, details: Sequence[str]) -> None:
        """Leave the bar's last state on screen and print the summary and its details."""
        if self._terminal is not None:
            self.show(finished, total, "")
            keep_status_line()
        self._out.write(summary(finished, total, ending) + "\n")
        for line in details:
            self._out.write(f"  {line}\n")
        self._out.flush()

    def _columns(self) -> int:
        assert self._terminal is not None
        try:
            return os.get_terminal_size(self._terminal.fileno()).columns
        except (OSError, ValueError):
            return 80
