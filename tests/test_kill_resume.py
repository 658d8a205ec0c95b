"""SIGKILL at the worst moments, then the same command again, loses nothing.

A child process runs training with one hook that kills itself with SIGKILL at
a chosen point: inside the feature cache build, mid-checkpoint save, or
between an epoch and its checkpoint; or that sends itself SIGTERM, as a
cluster preempts a job, in the middle of an epoch. The rerun must finish with
the same parameters as a run that was never interrupted.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import chex
import pytest

import helpers
from aeasd_jax.evaluation import evaluate
from aeasd_jax.evaluation import results

_CHILD = textwrap.dedent("""
    import json, os, runpy, signal, sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    import ml_collections
    from aeasd_jax.data import cache_compute
    from aeasd_jax.workdir import checkpoint
    from aeasd_jax.workdir import metric_log
    from aeasd_jax import runtime
    from aeasd_jax.training import train
    runtime.configure_logging()

    config = ml_collections.ConfigDict(json.load(open(sys.argv[1])))
    workdir, kill_at = sys.argv[2], sys.argv[3]

    def die():
      os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "cache_build":
      in_order = cache_compute._in_order
      def dying_in_order(*args, **kwargs):
        for i, item in enumerate(in_order(*args, **kwargs)):
          if i == 20:
            die()
          yield item
      cache_compute._in_order = dying_in_order
    elif kill_at == "checkpoint_save":
      save = checkpoint.save
      def dying_save(mngr, epoch, state, **kwargs):
        # Orbax goes on writing in the background.
        save(mngr, epoch, state, **kwargs)
        if epoch == 4:
          die()
      checkpoint.save = dying_save
    elif kill_at == "epoch":
      write = metric_log.MetricWriter.write
      def dying_write(self, record, step=None):
        if record.get("epoch") == 3:
          die()
        write(self, record, step)
      metric_log.MetricWriter.write = dying_write
    elif kill_at == "result_write":
      replace = os.replace
      def dying_replace(src, dst):
        if str(dst).endswith("result.csv"):
          die()
        replace(src, dst)
      os.replace = dying_replace
      from aeasd_jax.evaluation import evaluate
      evaluate.evaluate(workdir)
      sys.exit(0)
    elif kill_at == "sigterm":
      from aeasd_jax.training import trainer
      epoch = trainer.Trainer.epoch
      def preempted_epoch(self, state):
        if int(state.epoch) == 2:  # In epoch 3, not one checkpoint_every saves.
          os.kill(os.getpid(), signal.SIGTERM)
        return epoch(self, state)
      trainer.Trainer.epoch = preempted_epoch
      # train.py itself, for its exit code, with the config as a config file.
      config_py = workdir + ".config.py"
      loaded = f"json.load(open({sys.argv[1]!r}))"
      with open(config_py, "w") as f:
        f.write(
          "import json, ml_collections\\n"
          "def get_config():\\n"
          f"  return ml_collections.ConfigDict({loaded})\\n"
        )
      sys.argv = ["train.py", "--config=" + config_py, "--workdir=" + workdir]
      runpy.run_path("train.py", run_name="__main__")
    train.train_and_evaluate(config, workdir)
""")


def _child(config_file, workdir, kill_at):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # SIGTERM as a process has it by default, whatever this one inherited.
  with helpers.signal_handlers(helpers.PYTHON_SIGNALS):
    return subprocess.run(
      [sys.executable, "-c", _CHILD, str(config_file), str(workdir), kill_at],
      env=env,
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=300,
    )


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_root):
  base = tmp_path_factory.mktemp("kill")
  config = helpers.tiny_config(tiny_root, base / "cache")
  config.compile_cache_dir = str(base / "jax_cache")
  config.model.depth = 1
  config.train.epochs = 4
  config.train.checkpoint_every = 2
  config_file = base / "config.json"
  config_file.write_text(config.to_json())
  straight = base / "straight"
  assert _child(config_file, straight, "none").returncode == 0
  return base, config_file, helpers.latest_weights(straight)


@pytest.mark.parametrize("kill_at", ["cache_build", "checkpoint_save", "epoch"])
def test_killed_training_resumes_to_the_same_parameters(setting, kill_at):
  base, config_file, expected = setting
  config = json.loads(config_file.read_text())
  # A fresh feature cache, so the cache build itself is what gets killed.
  config["data"]["cache_dir"] = str(base / f"cache_{kill_at}")
  killed_config = base / f"config_{kill_at}.json"
  killed_config.write_text(json.dumps(config))
  workdir = base / kill_at
  killed = _child(killed_config, workdir, kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  if kill_at == "cache_build":
    features = base / f"cache_{kill_at}" / "features"
    assert not [p for p in features.iterdir() if not p.name.startswith(".")]
  # Orbax finalises a save by renaming its folder to the bare epoch number;
  # anything else is a save the kill interrupted.
  complete = (
    [
      int(p.name)
      for p in (workdir / "checkpoints").glob("*")
      if p.name.isdigit()
    ]
    if (workdir / "checkpoints").exists()
    else []
  )
  rerun = _child(killed_config, workdir, "none")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  if complete:
    assert f"resuming from epoch {max(complete)} " in rerun.stderr
  else:
    assert "resuming" not in rerun.stderr
  chex.assert_trees_all_equal(helpers.latest_weights(workdir), expected)
  if kill_at == "cache_build":
    leftovers = list((base / f"cache_{kill_at}" / "features").glob(".tmp-*"))
    assert not leftovers


def test_preempted_training_saves_its_epoch_and_resumes_to_the_same_parameters(
  setting,
):
  base, config_file, expected = setting
  workdir = base / "sigterm"
  stopped = _child(config_file, workdir, "sigterm")
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
  assert "Traceback" not in stopped.stderr
  assert "SIGTERM: stopping once this epoch is saved" in stopped.stderr
  assert stopped.stderr.strip().splitlines()[-1] == (
    "interrupted: stopped after epoch 3 as asked (SIGTERM); rerun the same"
    " command to resume from it"
  )
  # Epoch 3 is saved although checkpoint_every=2: the stop saves it.
  assert sorted(
    int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
  ) == [2, 3]
  rerun = _child(config_file, workdir, "none")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "resuming from epoch 3 " in rerun.stderr
  chex.assert_trees_all_equal(helpers.latest_weights(workdir), expected)


def test_killed_evaluation_leaves_previous_results_intact(setting):
  base, config_file, _ = setting
  workdir = base / "straight"
  evaluate.evaluate(workdir)
  result = workdir / "results" / "mse" / "result.csv"
  before = result.read_bytes()
  # Different results would be written: evaluate the latest weights instead.
  killed = _child(config_file, workdir, "result_write")
  assert killed.returncode == -signal.SIGKILL
  assert result.read_bytes() == before
  results.read_result_csv(result)
