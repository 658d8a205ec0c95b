"""Ctrl-C and SIGTERM during training, whatever dispositions a run inherits.

Each test sets the dispositions it needs (helpers.signal_handlers), so it
passes as well under nohup or as a background job, which starts with SIGINT
ignored. Real training runs that get these signals are in
test_bad_inputs.py (Ctrl-C) and test_kill_resume.py (SIGTERM).
"""

import os
import signal

import pytest

import helpers
from aeasd_jax import runtime
from aeasd_jax.errors import Interrupted
from aeasd_jax.training import interrupts


def _inherited(signum, frame):
  """A handler the run finds installed, to be put back after it."""
  raise AssertionError(f"signal {signum} reached the inherited handler")


def test_sigterm_stops_after_the_epoch_and_a_second_one_changes_nothing(
  caplog,
):
  stop = interrupts.StopRequest()
  with helpers.signal_handlers(
    {signal.SIGINT: _inherited, signal.SIGTERM: _inherited}
  ):
    with stop.installed():
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.requested and stop.reason == "SIGTERM"
      assert "SIGTERM: stopping once this epoch is saved" in caplog.text
      with stop.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)  # Inside an epoch: only noted.
      assert "SIGTERM again: still finishing" in caplog.text
      assert stop.reason == "SIGTERM"
      # A person's second Ctrl-C still stops at once.
      with pytest.raises(KeyboardInterrupt):
        with stop.interruptible():
          os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is _inherited
    assert signal.getsignal(signal.SIGTERM) is _inherited


@pytest.mark.parametrize(
  "ignored, handled", [("SIGINT", "SIGTERM"), ("SIGTERM", "SIGINT")]
)
def test_a_signal_inherited_as_ignored_stays_ignored(ignored, handled):
  ignored, handled = signal.Signals[ignored], signal.Signals[handled]
  stop = interrupts.StopRequest()
  with helpers.signal_handlers({ignored: signal.SIG_IGN, handled: _inherited}):
    with stop.installed():
      assert signal.getsignal(ignored) is signal.SIG_IGN
      os.kill(os.getpid(), ignored)
      assert not stop.requested
      os.kill(os.getpid(), handled)
      assert stop.signum == handled
    assert signal.getsignal(ignored) is signal.SIG_IGN
    assert signal.getsignal(handled) is _inherited


@pytest.mark.parametrize("signum, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_run_exits_with_the_shell_code_of_its_signal(
  signum, code, capsys
):
  def stopped():
    raise Interrupted("stopped after epoch 3", signal.Signals[signum])

  with pytest.raises(SystemExit) as exit_info:
    runtime.run(stopped)
  assert exit_info.value.code == code
  assert capsys.readouterr().err == "interrupted: stopped after epoch 3\n"
