"""Data parallelism: 8 CPU devices, and 2 processes x 4 devices, equal 1 device.

Device counts must be set before jax is imported, so every run is a
subprocess. They train in float64 (JAX_ENABLE_X64=1), where summing the batch
in another order (per device, then across devices) changes the weights by
about 1e-15, and BatchNorm on per-device statistics by 1e-2.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import helpers
from aeasd_jax.training import config_check
from aeasd_jax.data import dataset
from aeasd_jax.errors import AeasdError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GHOST_BATCHES = 8  # The 8-device run's shares of the batch.

_RUN = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from aeasd_jax import runtime
    (config_file, workdir, devices, coordinator, num_processes, process_id,
     mutation) = sys.argv[1:8]
    runtime.initialize_distributed(coordinator or None, int(num_processes),
                                   int(process_id))
    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == int(devices), jax.devices()
    import ml_collections
    from flax import nnx
    from aeasd_jax.models import autoencoders
    from aeasd_jax.training import train
    from aeasd_jax.training import trainer
    from aeasd_jax.data import window_data
    # Count the frame rows this process reads from the feature cache.
    read, rows = window_data.ClipFrames.__getitem__, {"read": 0, "total": 0}
    def counting_read(self, index):
      out = read(self, index)
      rows["read"] += len(out)
      rows["total"] = max(rows["total"], self.shape[0])
      return out
    window_data.ClipFrames.__getitem__ = counting_read

    if mutation == "ghost":
      # The bug the comparison must catch: BatchNorm statistics of each
      # device's share of the batch instead of the global batch. One device
      # normalising each of 8 sub-batches by its own statistics computes
      # exactly what 8 devices without a cross-device mean would.
      block_call = autoencoders.DenseBlock.__call__
      def ghost_call(self, x, *, train):
        if not train:
          return block_call(self, x, train=train)
        norm = self.norm
        y = self.dense(x)
        ghosts = y.reshape(int(sys.argv[8]), -1, y.shape[-1])
        mean = ghosts.mean(1, keepdims=True)
        var = ((ghosts - mean) ** 2).mean(1, keepdims=True)
        for stat, value in ((norm.mean, mean), (norm.var, var)):
          stat[...] = (norm.momentum * stat[...] +
                       (1 - norm.momentum) * value.mean((0, 1)))
        y = (ghosts - mean) * jax.lax.rsqrt(var + norm.epsilon)
        y = y.reshape(x.shape[:-1] + (-1,))
        return nnx.relu(y * norm.scale[...] + norm.bias[...])
      autoencoders.DenseBlock.__call__ = ghost_call

    config = ml_collections.ConfigDict(json.load(open(config_file)))
    state = trainer.local_copy(train.train_and_evaluate(config, workdir))
    if int(process_id) == 0:
      leaves = jax.tree_util.tree_flatten_with_path(
          (state.params, state.batch_stats))[0]
      np.savez(f"{workdir}/weights.npz",
               **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print(json.dumps(rows))
""")


def _start(
  config_file,
  workdir,
  devices,
  coordinator="",
  num_processes=1,
  process_id=0,
  mutation="",
):
  # Appended, not replaced: the suite may run under XLA_FLAGS of its own
  # (.ci/run's second pass caps the instruction set).
  flags = (
    f"{os.environ.get('XLA_FLAGS', '')}"
    f" --xla_force_host_platform_device_count={devices}"
  ).strip()
  env = dict(
    os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1", XLA_FLAGS=flags
  )
  return subprocess.Popen(
    [
      sys.executable,
      "-c",
      _RUN,
      str(config_file),
      str(workdir),
      str(devices * num_processes),
      coordinator,
      str(num_processes),
      str(process_id),
      mutation,
      str(GHOST_BATCHES),
    ],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait(process):
  """The frame rows the process read: {"read": ..., "total": ...}."""
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_root, session_cache_dir):
  """The same tiny training on 1 device, 8 devices, and 2 processes x 4.

  Also the fused step (config.train.kernels="jax_fused") on 8 devices, whose
  batch statistics must be global sums too; and, to show the comparison can
  fail, 1 device with BatchNorm on per-device statistics.
  """
  config = helpers.tiny_config(tiny_root, session_cache_dir)
  config.train.num_seeds = 2
  config.model.compute_dtype = "float64"
  # test_train.ADAM_EPS_FOR_EQUIVALENCE, on which the tolerance's bound rests.
  config.train.adam_eps = 1e-3
  # Builds the feature cache once, before the runs that read it.
  dataset.load(config, show_progress=False)
  base = tmp_path_factory.mktemp("devices")
  config_file = base / "config.json"
  config_file.write_text(config.to_json())
  config.train.kernels = "jax_fused"
  fused_config_file = base / "fused_config.json"
  fused_config_file.write_text(config.to_json())
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    coordinator = f"127.0.0.1:{s.getsockname()[1]}"
  processes = {
    "one": [_start(config_file, base / "one", 1)],
    "ghost": [_start(config_file, base / "ghost", 1, mutation="ghost")],
    "eight": [_start(config_file, base / "eight", 8)],
    "fused_eight": [_start(fused_config_file, base / "fused_eight", 8)],
    "pair": [
      _start(config_file, base / "pair", 4, coordinator, 2, i) for i in range(2)
    ],
  }
  rows_read = {
    name: [_wait(p) for p in group] for name, group in processes.items()
  }
  weights = {}
  for name in processes:
    with np.load(base / name / "weights.npz") as stored:
      weights[name] = dict(stored)
  return {"rows_read": rows_read, **weights}


@pytest.mark.numerics
def test_eight_devices_equal_one(runs, assert_same_training):
  assert_same_training(runs["one"], runs["eight"])


@pytest.mark.numerics
def test_two_processes_of_four_devices_equal_one_process_of_eight(
  runs, assert_same_training
):
  assert_same_training(runs["eight"], runs["pair"])


@pytest.mark.numerics
def test_the_fused_step_on_eight_devices_equals_xla_on_one(
  runs, assert_same_training
):
  assert_same_training(runs["one"], runs["fused_eight"])


@pytest.mark.numerics
def test_batchnorm_on_per_device_statistics_fails_the_comparison(
  runs, assert_same_training
):
  with pytest.raises(AssertionError, match="Not equal to tolerance"):
    assert_same_training(runs["one"], runs["ghost"])


def test_float64_without_x64_is_refused(tiny_config):
  assert not jax.config.jax_enable_x64
  tiny_config.model.compute_dtype = "float64"
  with pytest.raises(
    AeasdError,
    match=r"config\.model\.compute_dtype="
    r"'float64': expected jax_enable_x64",
  ):
    config_check.check_config(tiny_config)


def test_each_process_reads_only_its_devices_rows(runs):
  [eight] = runs["rows_read"]["eight"]
  pair = runs["rows_read"]["pair"]
  assert eight["read"] == eight["total"]
  for process in pair:
    # Half the devices, half the rows (the last block may be padding).
    assert process["read"] <= process["total"] // 2 + 8
  assert sum(p["read"] for p in pair) == eight["total"]
