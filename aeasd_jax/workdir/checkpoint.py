"""Orbax checkpoints of the stacked training state (a workdir's checkpoints/).

Orbax writes each step into a temporary folder and renames it when complete,
so a crash during a save never leaves a step that restores.
"""

import contextlib
import gc
import time
import threading
import sys
import logging
import os
import pathlib

import jax
import orbax.checkpoint as ocp

from aeasd_jax import runtime
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown

# etils' Path.glob, through which Orbax finds a step's per-process files,
# reads the whole path as a pattern.
_GLOB_CHARACTERS = "*?["


def check_directory(directory):
  """Refuses a checkpoints folder whose path Orbax cannot use, naming why.

  TensorStore takes only UTF-8 paths, and a glob character anywhere in the
  path hides a step's files from Orbax's own pattern (or shows it another
  folder's): such a run trains, then never restores.

  Args:
    directory: a workdir's checkpoints folder, absolute.

  Raises:
    AeasdError: naming the workdir and why.
  """
  directory = pathlib.Path(directory)
  problem = runtime.path_problem(directory, folder=True)
  found = [c for c in _GLOB_CHARACTERS if c in os.fspath(directory)]
  if found and not problem:
    problem = (
      f"{shown(directory)} holds {found[0]!r}, which Orbax reads as a glob"
      " pattern when it looks for a checkpoint's files, so they would never"
      " be read back; expected a path without *, ? or [ (rename the workdir,"
      " e.g. sweep_1 for sweep[1])"
    )
  if problem:
    raise AeasdError(f"workdir {shown(directory.parent)}: {problem}")


def manager(directory, keep=3):
  """A CheckpointManager of `directory` keeping the newest `keep` epochs."""
  check_directory(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  # The handler named up front lets item_metadata() read a step's shapes
  # before restoring it.
  return ocp.CheckpointManager(
    directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def save(mngr, epoch, state, in_flight=None):
  """Starts an asynchronous save of `state` as step `epoch`.

  Args:
    mngr: from manager().
    epoch: the step to save.
    state: the training state.
    in_flight: the step whose background write may still be running; its
      failure surfaces here, and is reported under its own step number.
  """
  with _write_errors(mngr, in_flight):
    mngr.check_for_errors()
  with _write_errors(mngr, epoch):
    mngr.save(epoch, args=ocp.args.StandardSave(state))


def wait(mngr, in_flight):
  """Waits for the background write of step `in_flight`, as before exiting."""
  with _write_errors(mngr, in_flight):
    mngr.wait_until_finished()


@contextlib.contextmanager
def _write_errors(mngr, epoch):
  try:
    yield
  except OSError as e:
    raise AeasdError(
      f"cannot write checkpoint {epoch} under {mngr.directory}"
      f" ({e.strerror or e}); expected a writable workdir with"
      " free space. Earlier complete checkpoints are kept"
    ) from None


def restore(mngr, abstract_state, step=None):
  """Restores step `step` (the latest when None) onto the abstract state.

  Args:
    mngr: from manager().
    abstract_state: a pytree of jax.ShapeDtypeStruct with shardings, the
      shape the run's config expects.
    step: the epoch to restore.

  Raises:
    AeasdError: there is no such step, the checkpoint was written by another
      model or config, or its files are damaged.
  """
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    raise AeasdError(
      f"{mngr.directory}: no checkpoint for epoch {step};"
      f" found {sorted(mngr.all_steps())}"
    )
  where = mngr.directory / str(step)
  # A readable checkpoint of other shapes is told apart by comparing first.
  stored = _read(mngr, step, lambda: _leaf_shapes(mngr.item_metadata(step)))
  mismatch = _first_mismatch(stored, _leaf_shapes(abstract_state))
  if mismatch:
    raise AeasdError(
      f"{where}: the checkpoint does not fit this config ({mismatch});"
      " expected a workdir trained with the same model, groups and seeds"
    )
  return _read(
    mngr,
    step,
    lambda: mngr.restore(step, args=ocp.args.StandardRestore(abstract_state)),
  )


def _read(mngr, step, read):
  """read() of step `step`; a failure is one AeasdError, and nothing else.

  Orbax and TensorStore report damaged files with many exception types
  (bare Exception among them), so any failure to read is damage.
  """
  with _logs_held(), _reports_held() as settle:
    try:
      return read()
    except Exception as e:  # pylint: disable=broad-except
      error = _unreadable(mngr, step, e)
    # With the failure let go, the asyncio tasks of the failed reads are
    # collected and log their exceptions, and TensorStore's threads report
    # into Orbax's closed event loop: while all of it is still held.
    settle()
    raise error


@contextlib.contextmanager
def _reports_held(quiet_s=0.2, limit_s=2.0):
  """Holds what other threads print as exceptions during the block.

  A failed read's background work reports through sys.excepthook (from
  TensorStore's threads), sys.unraisablehook (coroutines collected) and
  threading.excepthook; printed, it would bury the error that follows. On
  success the reports go to the hooks as they would have; on failure they
  are dropped. Yields settle(), which waits, up to limit_s, until quiet_s
  pass without a new report.
  """
  reports = []
  hooks = (sys.excepthook, sys.unraisablehook, threading.excepthook)
  sys.excepthook = lambda *args: reports.append((0, args))
  sys.unraisablehook = lambda report: reports.append((1, (report,)))
  threading.excepthook = lambda report: reports.append((2, (report,)))

  def settle():
    deadline = time.monotonic() + limit_s
    seen = -1
    while seen != len(reports) and time.monotonic() < deadline:
      seen = len(reports)
      gc.collect()
      time.sleep(quiet_s)

  try:
    yield settle
  except BaseException:
    reports.clear()
    raise
  finally:
    sys.excepthook, sys.unraisablehook, threading.excepthook = hooks
  for hook, args in reports:
    hooks[hook](*args)


@contextlib.contextmanager
def _logs_held():
  """Holds what Orbax (through absl) and asyncio log during the block.

  A damaged checkpoint can make them log a traceback per failed read, which
  would bury the one `error:` line that says what is wrong. On failure the
  records are dropped; on success they are logged as they would have been.
  """
  records = []
  holder = logging.Handler()
  holder.emit = records.append
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  before = [(logger.handlers, logger.propagate) for logger in loggers]
  for logger in loggers:
    logger.handlers, logger.propagate = [holder], False
  try:
    yield
  except BaseException:
    records.clear()
    raise
  finally:
    for logger, (handlers, propagate) in zip(loggers, before):
      logger.handlers, logger.propagate = handlers, propagate
  for record in records:
    logging.getLogger(record.name).handle(record)


def _unreadable(mngr, step, error):
  """Why step `step` could not be read: pruned meanwhile, or damaged."""
  where = mngr.directory / str(step)
  if not where.exists():
    # A train.py running in this workdir deletes all but the newest
    # keep_checkpoints steps, possibly while another process reads one.
    return AeasdError(
      f"{where}: the checkpoint was removed while it was being read, by a"
      " train.py running in this workdir that keeps only its newest"
      " checkpoints; expected a checkpoint that stays: rerun to read the"
      " newest one, or once training has finished"
    )
  others = sorted(set(mngr.all_steps()) - {step})
  earlier = (
    f"delete {mngr.directory / str(step)} to use the previous"
    f" checkpoints {others}"
    if others
    else "delete the workdir's checkpoints folder to train afresh"
  )
  # TensorStore appends a long repr of its spec; the first clause is enough.
  detail = (str(error).splitlines() or [type(error).__name__])[0]
  detail = detail.split(" See full TensorStore details")[0][:200]
  return AeasdError(
    f"{mngr.directory / str(step)}: the checkpoint is damaged"
    f" ({detail}); expected complete checkpoint files:"
    f" {earlier}"
  )


def _leaf_shapes(tree):
  """{"params/encoder/0/dense/kernel": (shape, dtype)} of a pytree."""

  def name(path):
    return "/".join(
      str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
      for k in path
    )

  return {
    name(path): (tuple(leaf.shape), str(leaf.dtype))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _first_mismatch(stored, expected):
  """A description of the first difference of two _leaf_shapes, or None."""
  for path in sorted(set(stored) | set(expected)):
    if path not in stored:
      return f"no {path} in the checkpoint"
    if path not in expected:
      return f"{path} is not in this config's model"
    if stored[path] != expected[path]:
      (shape, dtype), (want, want_dtype) = stored[path], expected[path]
      return (
        f"{path} is {dtype}{list(shape)}, this config expects"
        f" {want_dtype}{list(want)}"
      )
  return None
