"""The console: stderr as lines (whether one is open, so an error line starts its own; a progress
bar's redraws as lines of their own in a log file), and closing every bar on the way out."""

from __future__ import annotations

import contextlib
import io
import os
import sys


def end_progress_bars() -> None:
    """Close every progress bar still open, so that the error line starts a line of its own. A
    bar is left open when the interrupt lands between its first drawing and the `with` that
    would close it, and its last drawing ends without a newline."""
    std = sys.modules.get("tqdm.std")  # no bar was ever drawn without it
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        bar.close()


# A progress bar in a log file draws one line at most this often (and at its start and end).
LOG_BAR_INTERVAL_S = 30


class Lines(io.TextIOBase):
    """stderr as a command writes it, in a terminal: passed on as it is, remembering whether
    the last character ended a line, so that an error line can start a line of its own
    whatever a progress bar left (a bar with `leave=False` erases itself with a carriage
    return, and its line never ends)."""

    def __init__(self, stream):
        self.stream, self.at_line_start = stream, True

    def write(self, text: str) -> int:
        self.stream.write(text)
        if text:
            self.at_line_start = text.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


class LogLines(Lines):
    """stderr when it is not a terminal (a pipeline job's log file): each redraw of a progress
    bar (a carriage return, then the bar again) becomes a line of its own, and the blanks with
    which a bar erases itself are dropped, so the log reads as lines."""

    def write(self, text: str) -> int:
        first, *redraws = text.split("\r")
        out = []
        for i, chunk in enumerate([first, *(r for r in redraws if r.strip())]):
            if i and not self.at_line_start:
                out.append("\n")
                self.at_line_start = True
            if chunk:
                out.append(chunk)
                self.at_line_start = chunk.endswith("\n")
        self.stream.write("".join(out))
        return len(text)


@contextlib.contextmanager
def stderr_as_lines():
    """Within: sys.stderr knows whether a line is open (`Lines`); when it is not a terminal,
    progress bars are written as lines, one per LOG_BAR_INTERVAL_S unless TQDM_MININTERVAL is
    set (in a terminal they redraw in place as usual)."""
    stderr, tty = sys.stderr, sys.stderr.isatty()
    own_interval = not tty and "TQDM_MININTERVAL" not in os.environ
    sys.stderr = Lines(stderr) if tty else LogLines(stderr)
    if own_interval:
        os.environ["TQDM_MININTERVAL"] = str(LOG_BAR_INTERVAL_S)
    try:
        yield sys.stderr
    finally:
        sys.stderr.flush()
        sys.stderr = stderr
        if own_interval:
            os.environ.pop("TQDM_MININTERVAL", None)
