"""Data parallelism: 8 CPU devices, and 2 processes x 4 devices, equal 1 device.

Device counts must be set before jax is imported, so those runs are
subprocesses; this process (1 device) runs the reference.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import chex
import jax
import pytest

import helpers
from aeasd_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = textwrap.dedent("""
    import json, sys
    import jax
    from aeasd_jax import runtime
    coordinator, num_processes, process_id = sys.argv[3:6]
    runtime.initialize_distributed(coordinator or None, int(num_processes),
                                   int(process_id))
    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == 8, jax.devices()
    import ml_collections
    from aeasd_jax import data, train

    # Count the frame rows this process reads from the feature cache.
    read, rows = data.ClipFrames.__getitem__, {"read": 0, "total": 0}
    def counting_read(self, index):
      out = read(self, index)
      rows["read"] += len(out)
      rows["total"] = max(rows["total"], self.shape[0])
      return out
    data.ClipFrames.__getitem__ = counting_read

    config = ml_collections.ConfigDict(json.load(open(sys.argv[1])))
    train.train_and_evaluate(config, sys.argv[2])
    print(json.dumps(rows))
""")


def _start(config_file, workdir, devices, coordinator="", num_processes=1,
           process_id=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-c", _RUN, str(config_file), str(workdir), coordinator,
       str(num_processes), str(process_id)], env=env, cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(process):
  """The frame rows the process read: {"read": ..., "total": ...}."""
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  return json.loads(stdout.strip().splitlines()[-1])




def _assert_same_training(a, b):
  (params_a, stats_a), (params_b, stats_b) = a, b
  chex.assert_trees_all_close(params_a, params_b, atol=1e-5, rtol=1e-5)
  # Running means average activations of raw dB features (magnitude ~100),
  # which scale the parameters' rounding differences up by that much.
  chex.assert_trees_all_close(stats_a, stats_b, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_root, session_cache_dir):
  """The same tiny training on 1 device, 8 devices, and 2 processes x 4."""
  config = helpers.tiny_config(tiny_root, session_cache_dir)
  config.train.num_seeds = 2
  # See test_train.ADAM_EPS_FOR_EQUIVALENCE: the sharded program sums the
  # batch in another order.
  config.train.adam_eps = 1e-3
  base = tmp_path_factory.mktemp("devices")
  config_file = base / "config.json"
  config_file.write_text(config.to_json())
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    coordinator = f"127.0.0.1:{s.getsockname()[1]}"
  eight = _start(config_file, base / "eight", 8)
  pair = [_start(config_file, base / "pair", 4, coordinator, 2, i)
          for i in range(2)]
  assert jax.device_count() == 1
  train.train_and_evaluate(config, base / "one")
  rows_read = [_wait(process) for process in [eight, *pair]]
  return {"rows_read": rows_read,
          **{name: helpers.latest_weights(base / name)
             for name in ("one", "eight", "pair")}}


def test_eight_devices_equal_one(runs):
  _assert_same_training(runs["one"], runs["eight"])


def test_two_processes_of_four_devices_equal_one_process_of_eight(runs):
  _assert_same_training(runs["eight"], runs["pair"])


def test_each_process_reads_only_its_devices_rows(runs):
  eight, *pair = runs["rows_read"]
  assert eight["read"] == eight["total"]
  for process in pair:
    # Half the devices, half the rows (the last block may be padding).
    assert process["read"] <= process["total"] // 2 + 8
  assert sum(p["read"] for p in pair) == eight["total"]
