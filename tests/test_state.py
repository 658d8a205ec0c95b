"""The typed training state: old workdirs restore, and no hidden copies.

An epoch and its model selection run under jax.transfer_guard("disallow"), so
an implicit host<->device copy in the hot loop fails here, as big_vision
guards against.
"""

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp

from aeasd_jax.workdir import checkpoint
from aeasd_jax.data import dataset
from aeasd_jax.training import run_identity
from aeasd_jax.training import train
from aeasd_jax.training import trainer as trainer_lib
from aeasd_jax.data import window_data
from aeasd_jax.training import restore
from aeasd_jax.workdir import layout


def test_a_checkpoint_of_the_untyped_state_restores(tiny_config, tmp_path):
  """Checkpoints held nested dicts before the state was typed."""
  tiny_config.data.machine_types = ("fan",)
  train.train_and_evaluate(tiny_config, tmp_path)
  config = run_identity.load_config(tmp_path)
  groups = layout.Workdir(tmp_path).read_groups()
  _, params, batch_stats, _ = restore.load_weights(
    config, layout.Workdir(tmp_path), groups, "latest"
  )
  mngr = checkpoint.manager(layout.Workdir(tmp_path).checkpoints)
  untyped = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore())
  assert isinstance(untyped, dict) and isinstance(untyped["best"], dict)
  mngr.save(99, args=ocp.args.StandardSave(untyped))
  mngr.wait_until_finished()
  mngr.close()
  _, old_params, old_stats, tag = restore.load_weights(
    config, layout.Workdir(tmp_path), groups, "99"
  )
  assert tag == "99@99"
  chex.assert_trees_all_equal((old_params, old_stats), (params, batch_stats))


def test_an_epoch_and_its_selection_copy_nothing_implicitly(tiny_config):
  features, groups = dataset.load(tiny_config, show_progress=False)
  windows = window_data.gather_host_windows(features, groups, 5)
  trainer = trainer_lib.Trainer(tiny_config, [g.name for g in groups], windows)
  trainer.compile()
  state = trainer.init_state()
  with jax.transfer_guard("disallow"):
    state, metrics = trainer.epoch(state)
    metrics = jax.device_get(metrics)
    state = trainer.keep_best(state, metrics["val_loss"])
  assert int(jax.device_get(state.epoch)) == 1
  np.testing.assert_array_equal(
    jax.device_get(state.best.epoch), np.ones(len(groups))
  )
