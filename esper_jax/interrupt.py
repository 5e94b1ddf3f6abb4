"""Ctrl-C during training: finish the interval in flight, checkpoint it, and say how to resume.

An interval is one compiled call that Python cannot interrupt cleanly, so the first SIGINT only sets a flag the
trainer reads at the next interval boundary. A second SIGINT raises ``KeyboardInterrupt`` at once (the trainer
still saves the last completed interval). The handler is installed only from the main thread and the previous one
is restored on exit.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

__all__ = ["EXIT_CODE", "StopRequest"]

EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd program


class StopRequest:
    """Context manager: ``requested`` turns True on the first SIGINT; the second raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing the current interval, then saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
