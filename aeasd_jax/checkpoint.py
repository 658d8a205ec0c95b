"""Orbax checkpoints of the stacked training state, under <workdir>/checkpoints.

Orbax writes each step into a temporary folder and renames it when complete,
so a crash during a save never leaves a step that restores.
"""

import contextlib
import pathlib

import jax
import orbax.checkpoint as ocp

from aeasd_jax.errors import AeasdError


def manager(workdir, keep=3):
  """A CheckpointManager keeping the newest `keep` steps (epochs)."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr, epoch, state):
  """Starts an asynchronous save of `state` as step `epoch`.

  A failure of the previous save's background write surfaces here too.
  """
  with _write_errors(mngr, epoch):
    mngr.save(epoch, args=ocp.args.StandardSave(state))


def wait(mngr):
  """Waits for the background writes to finish, as before exiting."""
  with _write_errors(mngr, mngr.latest_step()):
    mngr.wait_until_finished()


@contextlib.contextmanager
def _write_errors(mngr, epoch):
  try:
    yield
  except OSError as e:
    raise AeasdError(f"cannot write checkpoint {epoch} under {mngr.directory}"
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
    AeasdError: there is no such step, or the checkpoint was written by
      another model or config.
  """
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    raise AeasdError(f"{mngr.directory}: no checkpoint for epoch {step};"
                     f" found {sorted(mngr.all_steps())}")
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except (ValueError, KeyError, TypeError) as e:
    raise AeasdError(
        f"{mngr.directory}/{step}: the checkpoint does not fit this config"
        f" ({str(e).splitlines()[0][:200]}); expected a workdir trained with"
        " the same model, groups and seeds") from None


def abstract(state):
  """The ShapeDtypeStruct tree (with shardings) of a concrete state."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
