"""A workdir over time: reruns, other data, rollbacks and concurrent pruning.

What surrounds the checkpoints must keep describing the run that made them:
the data it trained on, the meaning of its stored state, its config, and
the files derived from its weights.
"""

import json
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile

import helpers
from aeasd_jax.evaluation import evaluate
from aeasd_jax.scoring import group_scoring
from aeasd_jax.training import run_identity
from aeasd_jax.training import train
from aeasd_jax.workdir import file_io
from aeasd_jax.training import restore
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout


@pytest.fixture
def private_data(tiny_config, tmp_path):
  """A copy of the tiny dataset (fan only) that a test may change."""
  root = tmp_path / "data"
  shutil.copytree(tiny_config.data.root, root)
  tiny_config.data.root = str(root)
  tiny_config.data.machine_types = ("fan",)
  return root


def _a_training_clip(root):
  return sorted((root / "dev_data" / "fan" / "train").glob("*.wav"))[0]


def test_other_audio_under_the_same_names_is_refused(
  tiny_config, private_data, tmp_path
):
  train.train_and_evaluate(tiny_config, tmp_path / "run")
  clip = _a_training_clip(private_data)
  samples, rate = soundfile.read(clip, dtype="int16")
  soundfile.write(clip, samples[::-1].copy(), rate, subtype="PCM_16")
  tiny_config.train.epochs = 3
  with pytest.raises(AeasdError, match=r"was trained on other data"):
    train.train_and_evaluate(tiny_config, tmp_path / "run")


def test_a_moved_copy_of_the_data_resumes(tiny_config, private_data, tmp_path):
  train.train_and_evaluate(tiny_config, tmp_path / "run")
  moved = tmp_path / "moved"
  shutil.move(private_data, moved)
  tiny_config.data.root = str(moved)
  tiny_config.train.epochs = 3
  state = train.train_and_evaluate(tiny_config, tmp_path / "run")
  assert int(state.epoch) == 3


def test_a_setting_that_changes_the_stored_metric_is_refused(
  tiny_config, tmp_path
):
  train.train_and_evaluate(tiny_config, tmp_path)
  tiny_config.train.select_by = "dev_auc"
  with pytest.raises(AeasdError, match=r"holds a run with train.select_by"):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_a_failed_rerun_changes_no_file(tiny_config, tmp_path):
  train.train_and_evaluate(tiny_config, tmp_path)
  before = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
  tiny_config.data.root = str(tmp_path / "mistyped")
  tiny_config.train.epochs = 5
  with pytest.raises(AeasdError, match=r"config.data.root=.*mistyped"):
    train.train_and_evaluate(tiny_config, tmp_path)
  after = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
  assert after == before
  evaluate.evaluate(tmp_path)  # The finished run still evaluates.


def test_fewer_epochs_than_done_trains_nothing_and_says_so(
  tiny_config, tmp_path, caplog
):
  train.train_and_evaluate(tiny_config, tmp_path)
  tiny_config.train.epochs = 1
  state = train.train_and_evaluate(tiny_config, tmp_path)
  assert int(state.epoch) == 2
  assert "holds 2 epochs, more than config.train.epochs=1" in caplog.text
  assert run_identity.load_config(tmp_path).train.epochs == 2


def test_paths_are_stored_resolved(tiny_config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  shutil.copytree(tiny_config.data.root, tmp_path / "relative")
  tiny_config.data.root = "relative"
  tiny_config.data.machine_types = ("fan",)
  train.train_and_evaluate(tiny_config, tmp_path / "run")
  stored = json.loads((tmp_path / "run" / "config.json").read_text())
  assert stored["data"]["root"] == str(tmp_path / "relative")


def test_no_dev_auc_check_before_the_end_keeps_the_latest_as_best(
  tiny_config, tmp_path, caplog
):
  tiny_config.data.machine_types = ("fan",)
  tiny_config.train.select_by = "dev_auc"
  tiny_config.train.select_every = 10
  train.train_and_evaluate(tiny_config, tmp_path)
  assert "no dev AUC check ran" in caplog.text
  helpers.assert_best_equals_latest(tmp_path)


def _stored_thresholds(workdir):
  return layout.Workdir(workdir).read_thresholds()


def test_thresholds_of_rolled_back_weights_are_fitted_again(
  tiny_config, tmp_path
):
  tiny_config.data.machine_types = ("fan",)
  train.train_and_evaluate(tiny_config, tmp_path)
  before = _stored_thresholds(tmp_path)["best@2"]
  # Roll back: delete epoch 2 and train it again, differently.
  shutil.rmtree(tmp_path / "checkpoints" / "2")
  tiny_config.train.learning_rate = 1e-2
  train.train_and_evaluate(tiny_config, tmp_path)
  after = _stored_thresholds(tmp_path)["best@2"]
  config = run_identity.load_config(tmp_path)
  _, params, batch_stats, _ = restore.load_weights(
    config,
    layout.Workdir(tmp_path),
    layout.Workdir(tmp_path).read_groups(),
    "best",
  )
  assert after["weights"] == group_scoring.weights_digest(params, batch_stats)
  assert after["weights"] != before["weights"]
  assert after["thresholds"] != before["thresholds"]


def test_thresholds_of_other_weights_are_not_reused(tiny_config, tmp_path):
  tiny_config.data.machine_types = ("fan",)
  train.train_and_evaluate(tiny_config, tmp_path)
  stored = _stored_thresholds(tmp_path)
  stored["best@2"]["weights"] = "0" * 32  # As if fitted for other weights.
  stored["best@2"]["thresholds"] = {"fan": -1.0}
  file_io.write_json(tmp_path / "thresholds.json", stored)
  evaluate.evaluate(tmp_path)
  refitted = _stored_thresholds(tmp_path)["best@2"]["thresholds"]["fan"]
  assert np.isfinite(refitted) and refitted != -1.0


def test_a_checkpoint_pruned_while_read_is_named_as_such(
  tiny_config, tmp_path, monkeypatch
):
  tiny_config.data.machine_types = ("fan",)
  train.train_and_evaluate(tiny_config, tmp_path)
  original_restore = ocp.CheckpointManager.restore

  def pruned_meanwhile(self, step, *args, **kwargs):
    shutil.rmtree(tmp_path / "checkpoints" / str(step))  # As train.py would.
    return original_restore(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", pruned_meanwhile)
  with pytest.raises(AeasdError, match=r"removed while it was being read"):
    evaluate.evaluate(tmp_path)
