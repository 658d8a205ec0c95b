"""Data parallelism: 8 CPU devices train the same parameters as 1 device.

The 8-device run needs XLA_FLAGS before jax is imported, so it runs in a
subprocess; this process (1 device) runs the reference.
"""

import os
import subprocess
import sys
import textwrap

import chex
import jax

from aeasd_jax import evaluation
from aeasd_jax import train
from aeasd_jax import workdir_files

_EIGHT_DEVICE_RUN = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == 8, jax.devices()
    import json
    import ml_collections
    from aeasd_jax import train
    config = ml_collections.ConfigDict(json.load(open(sys.argv[1])))
    train.train_and_evaluate(config, sys.argv[2])
""")


def _latest(workdir):
  config = workdir_files.load_config(workdir)
  _, params, batch_stats, _ = evaluation.load_weights(
      config, workdir, evaluation.load_groups(workdir), "latest")
  return params, batch_stats


def test_eight_devices_equal_one(tiny_config, tmp_path):
  assert jax.device_count() == 1
  # See test_train.ADAM_EPS_FOR_EQUIVALENCE: the sharded program sums the
  # batch in another order.
  tiny_config.train.adam_eps = 1e-3
  tiny_config.train.num_seeds = 2
  train.train_and_evaluate(tiny_config, tmp_path / "one")
  config_file = tmp_path / "config.json"
  config_file.write_text(tiny_config.to_json())
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(
      [sys.executable, "-c", _EIGHT_DEVICE_RUN, str(config_file),
       str(tmp_path / "eight")], check=True, env=env, cwd=repo)
  (params_one, stats_one), (params_eight, stats_eight) = (
      _latest(tmp_path / "one"), _latest(tmp_path / "eight"))
  chex.assert_trees_all_close(params_one, params_eight, atol=1e-5, rtol=1e-5)
  # Running means average activations of raw dB features (magnitude ~100),
  # which scale the parameters' rounding differences up by that much.
  chex.assert_trees_all_close(stats_one, stats_eight, atol=1e-4, rtol=1e-4)
