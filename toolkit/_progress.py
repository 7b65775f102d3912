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
        #: Every row shown (or not, when quiet), column by column: the training curve.
        self.history = {c: [] for c in self.columns}

    def restore(self, history):
        """Start from the rows of an earlier run (a resumed training keeps its curve)."""
        for c in self.columns:
            self.history[c] = list((history or {}).get(c, []))

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
        for c, v in zip(self.columns, values):
            self.history[c].append(_plain(v))
        cells = []
        for v in values:
            if isinstance(v, float):
                v = f"{v:.3f}"
            cells.append(f" {str(v):<{self.width}}")
        self._out("|" + "|".join(cells) + "|")

    def finish(self):
        self._rule()


def _plain(value):
    """A JSON number for a table cell (numpy scalars and numeric strings included)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def say(message, verbose=True, stream=None):
    """Print one progress line when verbose."""
    if verbose:
        stream = stream or sys.stdout
        stream.write(message + "\n")
        stream.flush()
