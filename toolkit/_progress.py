"""Progress tables for long work (training loops), printed only when verbose."""

import sys
import time


class ProgressTable:
    """Print a ruled table row by row.

    Examples
    --------
    >>> t = ProgressTable(["Iteration", "Train Loss"], verbose=True)
    >>> t.start()                                    # doctest: +SKIP
    >>> t.row(1, 0.5)                                # doctest: +SKIP
    >>> t.finish()                                   # doctest: +SKIP
    """

    def __init__(self, columns, verbose=True, stream=None):
        self.columns = list(columns)
        self.verbose = verbose
        self.stream = stream
        self.width = max(len(c) for c in self.columns) + 2
        self.t0 = time.perf_counter()

    def _out(self, line):
        if self.verbose:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def _rule(self):
        self._out("+" + "+".join("-" * (self.width + 1) for _ in self.columns) + "+")

    def start(self):
        self.t0 = time.perf_counter()
        self._rule()
        self._out("|" + "|".join(f" {c:<{self.width}}" for c in self.columns) + "|")
        self._rule()

    def elapsed(self):
        return time.perf_counter() - self.t0

    def row(self, *values):
        cells = []
        for v in values:
            if isinstance(v, float):
                v = f"{v:.3f}"
            cells.append(f" {str(v):<{self.width}}")
        self._out("|" + "|".join(cells) + "|")

    def finish(self):
        self._rule()


def say(message, verbose=True, stream=None):
    """Print one progress line when verbose."""
    if verbose:
        stream = stream or sys.stdout
        stream.write(message + "\n")
        stream.flush()
