"""Ctrl-C during training: stop at an epoch boundary, or at once if safe.

The first Ctrl-C lets the epoch finish and be saved; a second one stops at
once, but only inside an epoch's computation.
"""

import contextlib
import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)


class StopRequest:
  """Ctrl-C once: finish the epoch, save it and stop. Twice: stop at once.

  "At once" only inside an epoch's computation: a checkpoint write cut short
  leaves Orbax's threads waiting forever, so the process would never exit.
  Installed only in a single-process run's main thread: the processes of a
  multi-host run could not agree on the epoch to stop at.
  """

  def __init__(self):
    self.requested = False
    self._interruptible = False

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested and self._interruptible:
      raise KeyboardInterrupt
    if self.requested:
      log.warning("Ctrl-C: finishing this epoch's checkpoint write first")
      return
    self.requested = True
    log.warning(
      "Ctrl-C: stopping once this epoch is saved (Ctrl-C again to stop at once)"
    )

  @contextlib.contextmanager
  def interruptible(self):
    """Marks the block as safe to stop with KeyboardInterrupt."""
    self._interruptible = True
    try:
      yield
    finally:
      self._interruptible = False

  @contextlib.contextmanager
  def installed(self):
    if (
      threading.current_thread() is not threading.main_thread()
      or jax.process_count() > 1
    ):
      yield
      return
    previous = signal.signal(signal.SIGINT, self._handle)
    try:
      yield
    finally:
      signal.signal(signal.SIGINT, previous)
