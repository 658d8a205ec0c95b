"""The weights a --checkpoint value names, restored from a trained workdir."""

import logging

import jax
import numpy as np

from aeasd_jax.models import registry
from aeasd_jax.workdir import checkpoint
from aeasd_jax.training import state as state_lib
from aeasd_jax.training import steps
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)


def load_weights(config, workdir, group_names, which):
  """Restores the weights a --checkpoint value names.

  Args:
    config: the workdir's config.
    workdir: the run's layout.Workdir.
    group_names: the groups the run trained, in order.
    which: "best" (the best weights kept in the latest checkpoint),
      "latest", or an epoch number.

  Returns:
    (setup, params, batch_stats, tag) where tag names the weights.
  """
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  class_names = workdir.read_classes() if registry.is_classifier(config) else ()
  setup = state_lib.make_setup(config, group_names, mesh, class_names)
  keys = state_lib.model_keys(
    config.seed, setup.train_group_names, config.train.num_seeds
  )
  abstract = state_lib.abstract_state(
    setup, keys, jax.sharding.SingleDeviceSharding(jax.devices()[0])
  )
  mngr = checkpoint.manager(workdir.checkpoints, config.train.keep_checkpoints)
  if which in ("best", "latest"):
    step = mngr.latest_step()
    if step is None:
      raise AeasdError(
        f"{mngr.directory}: no checkpoint; expected a workdir"
        " trained by train.py"
      )
  else:
    try:
      step = int(which)
    except ValueError:
      raise AeasdError(
        f"--checkpoint={which}: expected best, latest or an epoch number"
      ) from None
  state = checkpoint.restore(mngr, abstract, step)
  mngr.close()
  weights = _best_or_latest(state, setup) if which == "best" else state
  return setup, weights.params, weights.batch_stats, f"{which}@{step}"


def _best_or_latest(state, setup):
  """The best weights, but never a model's untrained initialisation.

  steps.keep_best keeps the latest weights as "best" until a model has a
  selection metric; a checkpoint written before it did so may still hold
  the initialisation (best epoch 0), which is replaced here.
  """
  best = state.best
  untrained = np.asarray(best.epoch) == 0
  unselected = ~np.isfinite(np.asarray(best.metric))
  if unselected.any():
    log.warning(
      "no model selection happened for %s (no validation clips, or no dev"
      " AUC check); using their latest weights as 'best'",
      ", ".join(np.asarray(setup.model_names)[unselected]),
    )
  if not untrained.any():
    return best
  return best._replace(
    params=steps.per_model_where(untrained, state.params, best.params),
    batch_stats=steps.per_model_where(
      untrained, state.batch_stats, best.batch_stats
    ),
  )
