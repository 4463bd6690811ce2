"""Ctrl-C during training: finish the step, save a checkpoint, stop.

Inside :func:`stop_requests` the first SIGINT only records the request; the training loop
checks it between steps (where the state is consistent: a checkpoint written there resumes
exactly), saves and raises :class:`Interrupted`. A second SIGINT stops at once, without saving.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving ``checkpoint`` at ``step`` (of ``total``)."""

    def __init__(self, checkpoint: Path, step: int, total: int) -> None:
        super().__init__(f"interrupted at step {step} of {total}; checkpoint {checkpoint}")
        self.checkpoint, self.step, self.total = checkpoint, step, total


@dataclass
class StopRequest:
    """Whether a stop was asked for (set by the SIGINT handler)."""

    requested: bool = False


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Turn the first SIGINT into ``request.requested = True``; a second one raises
    ``KeyboardInterrupt``. The previous handler is restored on exit. Outside the main thread
    (where Python cannot install signal handlers) SIGINT keeps its usual behaviour."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        logger.warning(
            "interrupt: stopping after this step to save a checkpoint "
            "(interrupt again to stop at once without saving)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
