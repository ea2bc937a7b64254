"""Progress the way Keras users expect it: Keras's own progress bar in a terminal, quiet lines in logs.

- ``fit_verbose()`` for ``fit``/``evaluate``/``predict``: 1 (the progress bar) when standard output is
  a terminal, 0 otherwise; the train scripts then print one line per epoch themselves
  (``utils.callbacks.PrintEpoch``), so a log file gets exactly one line per epoch.
- ``Bar`` for our own long loops (segmenting a test set, scoring): ``keras.utils.Progbar`` drawn on
  standard error, so it never mixes into output that is piped on (``crf/segment.py``'s words), and
  only when standard error is a terminal.
"""

import contextlib
import sys

import keras


def fit_verbose():
    return 1 if _isatty(sys.stdout) else 0


def _isatty(stream):
    return hasattr(stream, "isatty") and stream.isatty()


class Bar:
    """``keras.utils.Progbar`` on standard error::

        bar = Bar(len(lines), "segmenting")
        bar.add(len(batch))      # after each batch
        bar.close()

    Does nothing when standard error is not a terminal, or when ``total`` is below ``minimum`` (short
    jobs need no bar)."""

    def __init__(self, total, label="", minimum=1):
        self.bar = None
        if _isatty(sys.stderr) and total >= minimum:
            if label:
                sys.stderr.write(label + "\n")
            with contextlib.redirect_stdout(sys.stderr):  # Progbar writes to sys.stdout
                self.bar = keras.utils.Progbar(total, stateful_metrics=())
        self.done = 0

    def add(self, n):
        self.done += n
        if self.bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self.bar.update(self.done)

    def close(self):
        if self.bar is not None and self.done < self.bar.target:
            with contextlib.redirect_stdout(sys.stderr):
                self.bar.update(self.bar.target, finalize=True)
        self.bar = None
