"""Ctrl-C and SIGTERM during training: stop at an epoch boundary, or at once.

The first Ctrl-C or SIGTERM (how Slurm and Kubernetes preempt a job) lets
the epoch finish and be saved; a second Ctrl-C stops at once, but only
inside an epoch's computation.
"""

import contextlib
import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)

# The signals that ask for a stop, as messages name them.
SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopRequest:
  """Ctrl-C or SIGTERM once: finish the epoch, save it and stop.

  A second Ctrl-C stops at once, but only inside an epoch's computation: a
  checkpoint write cut short leaves Orbax's threads waiting forever, so the
  process would never exit. A second SIGTERM is only noted. It comes from a
  machine, not a person: a scheduler that sends SIGKILL itself once its
  grace period is over, or the same preemption delivered twice (scancel
  signals the job's processes and srun forwards its own copy; a wrapper
  script's trap passes it on). Stopping at once would throw away the very
  epoch the grace period was granted to save.

  Installed only in a single-process run's main thread: the processes of a
  multi-host run could not agree on the epoch to stop at.
  """

  def __init__(self):
    self.signum = None  # The signal that asked for the stop, once one has.
    self._interruptible = False

  @property
  def requested(self):
    return self.signum is not None

  @property
  def reason(self):
    """What asked for the stop, as messages name it: "Ctrl-C" or "SIGTERM"."""
    return SIGNALS[self.signum]

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      self._handle_again(signum)
      return
    self.signum = signum
    log.warning(
      "%s: stopping once this epoch is saved (%s)",
      SIGNALS[signum],
      "Ctrl-C again to stop at once"
      if signum == signal.SIGINT
      else "a preemption or a kill; a second SIGTERM changes nothing",
    )

  def _handle_again(self, signum):
    if signum == signal.SIGINT and self._interruptible:
      raise KeyboardInterrupt
    if signum == signal.SIGINT:
      log.warning("Ctrl-C: finishing this epoch's checkpoint write first")
    else:
      log.warning("SIGTERM again: still finishing and saving this epoch")

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
    with contextlib.ExitStack() as stack:
      for signum in SIGNALS:
        stack.enter_context(_handled(signum, self._handle))
      yield


@contextlib.contextmanager
def _handled(signum, handler):
  """`handler` for `signum` in the block, unless the signal is ignored.

  A signal inherited as ignored (SIG_IGN: a background job of a
  non-interactive shell starts with SIGINT so) stays ignored, as Python
  itself leaves it at startup: whoever started the run chose that the
  signal should not stop it. None is a handler set outside Python, which
  could not be put back.
  """
  previous = signal.getsignal(signum)
  if previous is signal.SIG_IGN or previous is None:
    yield
    return
  signal.signal(signum, handler)
  try:
    yield
  finally:
    signal.signal(signum, previous)
