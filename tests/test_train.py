"""The training engine: equivalences (vmap, resume), retracing, failures."""

import errno
import importlib.util
import json
import os
import shutil

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers
from aeasd_jax.training import config_check
from aeasd_jax.workdir import metric_log
from aeasd_jax.data import dataset
from aeasd_jax.evaluation import evaluate
from aeasd_jax.training import train
from aeasd_jax.training import trainer as trainer_lib
from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout


# Different programs (here: 4 models vmapped vs 2) round differently. The
# dense biases feeding BatchNorm have a true gradient of zero, so theirs is
# pure rounding noise, and Adam with eps=1e-8 turns noise into full +-lr steps.
# An eps well above that noise and well below the real gradients keeps Adam's
# behaviour and bounds how far an update moves per unit change of a gradient
# (lr / eps = 1), so a float tolerance can compare the runs.
ADAM_EPS_FOR_EQUIVALENCE = 1e-3


def _model(tree, m):
  return jax.tree.map(lambda x: np.asarray(x[m]), tree)


def test_loss_falls_and_checkpoints_are_written(tiny_config, tmp_path):
  tiny_config.train.epochs = 4
  tiny_config.train.keep_checkpoints = 2
  train.train_and_evaluate(tiny_config, tmp_path)
  records = [
    r
    for r in metric_log.read_records(layout.Workdir(tmp_path).metrics_file)
    if "epoch" in r
  ]
  assert [r["epoch"] for r in records] == [1, 2, 3, 4]
  for name in records[0]["train_loss"]:
    assert records[-1]["train_loss"][name] < records[0]["train_loss"][name]
  steps = sorted(
    int(p.name)
    for p in (tmp_path / "checkpoints").iterdir()
    if p.name.isdigit()
  )
  assert steps == [3, 4]


@pytest.mark.parametrize("kernels", ["xla", "jax_fused"])
def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path, kernels):
  tiny_config.train.kernels = kernels
  tiny_config.train.epochs = 3
  train.train_and_evaluate(tiny_config, tmp_path / "straight")
  tiny_config.train.epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path / "resumed")
  tiny_config.train.epochs = 3
  train.train_and_evaluate(tiny_config, tmp_path / "resumed")
  # Bit for bit: the same compiled program on the same device.
  chex.assert_trees_all_equal(
    helpers.latest_weights(tmp_path / "straight"),
    helpers.latest_weights(tmp_path / "resumed"),
  )


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
def test_training_groups_together_equals_training_each_alone(
  tiny_config, tiny_root, tmp_path, assert_same_training
):
  # Unequal groups: valve keeps half its training clips, so it takes masked
  # no-op steps while fan trains on.
  root = tmp_path / "data"
  shutil.copytree(tiny_root, root)
  for section in ("dev_data", "eval_data"):
    files = sorted((root / section / "valve" / "train").iterdir())
    for f in files[::2]:
      f.unlink()
  tiny_config.data.root = str(root)
  tiny_config.train.num_seeds = 2
  tiny_config.train.adam_eps = ADAM_EPS_FOR_EQUIVALENCE
  tiny_config.model.compute_dtype = "float64"
  tiny_config.data.machine_types = ("fan", "valve")
  train.train_and_evaluate(tiny_config, tmp_path / "together")
  together = helpers.latest_weights(tmp_path / "together")
  for g, machine_type in enumerate(("fan", "valve")):
    tiny_config.data.machine_types = (machine_type,)
    train.train_and_evaluate(tiny_config, tmp_path / machine_type)
    alone = helpers.latest_weights(tmp_path / machine_type)
    for seed in range(2):
      assert_same_training(_model(together, 2 * g + seed), _model(alone, seed))


def test_epoch_compiles_once(tiny_config):
  features, groups = dataset.load(tiny_config, show_progress=False)
  windows = window_data.gather_host_windows(features, groups, 5)
  trainer = trainer_lib.Trainer(tiny_config, [g.name for g in groups], windows)
  state = trainer.init_state()
  for _ in range(3):
    state, _ = trainer.epoch_fn(state, trainer.windows)
  assert int(state.epoch) == 3
  assert trainer.epoch_fn._cache_size() == 1  # pylint: disable=protected-access


def _poison_model(tree, model):
  """The tree with one value of `model`'s slice of a float leaf set to NaN."""
  leaves, treedef = jax.tree.flatten(tree)
  i = next(
    i
    for i, x in enumerate(leaves)
    if jax.numpy.issubdtype(x.dtype, np.floating)
  )
  leaves[i] = np.array(leaves[i])
  leaves[i][model].flat[0] = np.nan
  return jax.tree.unflatten(treedef, leaves)


def test_epoch_reports_state_gone_non_finite_for_that_model_only(tiny_config):
  # The loss can stay finite while the state does not: training-mode
  # BatchNorm never reads its running mean, and a NaN in Adam's moments
  # reaches the loss only through the next step's weights.
  tiny_config.data.machine_types = ("fan", "valve")
  features, groups = dataset.load(tiny_config, show_progress=False)
  windows = window_data.gather_host_windows(features, groups, 5)
  trainer = trainer_lib.Trainer(tiny_config, [g.name for g in groups], windows)
  for part in ("batch_stats", "opt_state"):
    state = trainer.init_state()
    state = state._replace(
      **{
        part: jax.device_put(
          _poison_model(getattr(state, part), 1), trainer.replicated
        )
      }
    )
    _, metrics = trainer.epoch_fn(state, trainer.windows)
    np.testing.assert_array_equal(
      np.asarray(metrics["finite"]), [True, False], err_msg=part
    )


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
  tiny_config, tmp_path, monkeypatch
):
  tiny_config.train.epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path)
  tiny_config.train.epochs = 3
  gather = window_data.gather_host_windows

  def poisoned(*args, **kwargs):
    windows = gather(*args, **kwargs)
    frames = np.asarray(windows.frames)
    frames[::7] = np.inf
    return windows._replace(frames=frames)

  monkeypatch.setattr(window_data, "gather_host_windows", poisoned)
  # The frames' own check would call this cache damage; the guard tested
  # here must catch divergence whatever its cause.
  monkeypatch.setattr(trainer_lib, "_all_finite", lambda rows: True)
  with pytest.raises(
    AeasdError,
    match=r"non-finite .* epoch 2 for group "
    r"\w+, seed0.*last good checkpoint \(epoch 1\) is kept",
  ):
    train.train_and_evaluate(tiny_config, tmp_path)
  steps = [
    p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()
  ]
  assert steps == ["1"]


@pytest.mark.parametrize(
  "setting,value,message",
  [
    ("train.batch_size", 0, "a positive integer"),
    ("train.batch_size", 3.5, "a positive integer"),
    ("train.epochs", "ten", "a positive integer"),
    ("train.learning_rate", -1.0, r"\(0, 1e3\]"),
    ("train.validation_split", 1.5, r"\[0, 0.9\]"),
    ("model.name", "GAN", "one of"),
    ("data.group_by", "machine", "one of"),
    ("score.pooling", "median", "one of"),
    ("model.kl_reduction", "max", "one of"),
  ],
)
def test_bad_config_value_names_the_setting(
  tiny_config, setting, value, message
):
  section, key = setting.split(".")
  # ConfigDict refuses most wrong types itself; a config file can still
  # build one, so check_config must catch them too.
  with tiny_config.ignore_type():
    tiny_config[section][key] = value
  with pytest.raises(AeasdError, match=rf"config\.{setting}=.*{message}"):
    config_check.check_config(tiny_config)


def test_batch_size_must_divide_by_devices(tiny_config):
  tiny_config.train.batch_size = 64
  with pytest.raises(AeasdError, match=r"divide by the 3 devices.* 63 or 66"):
    config_check.check_devices(tiny_config, 3)


def test_group_smaller_than_a_batch_is_refused(tiny_config, tmp_path):
  tiny_config.train.batch_size = 1 << 16
  with pytest.raises(AeasdError, match="fewer than config.train.batch_size"):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_workdir_of_another_model_is_refused(tiny_config, tmp_path):
  train.train_and_evaluate(tiny_config, tmp_path)
  tiny_config.model.name = "IDNN"
  with pytest.raises(
    AeasdError, match=r"model.name='AE', but this config has model.name='IDNN'"
  ):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_disk_full_during_a_checkpoint_is_a_clear_error(
  tiny_config, tmp_path, monkeypatch
):
  tiny_config.train.epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path)

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  tiny_config.train.epochs = 2
  with pytest.raises(
    AeasdError,
    match=r"cannot write checkpoint 2 .*No space"
    r" left on device.*Earlier complete checkpoints are kept",
  ):
    train.train_and_evaluate(tiny_config, tmp_path)
  monkeypatch.undo()
  assert helpers.latest_weights(tmp_path)  # Epoch 1 still restores.


def test_read_only_workdir_is_refused(tiny_config, tmp_path, monkeypatch):
  # Tests run as root, for whom permissions do not bind; ask as a user would.
  real_access = os.access
  monkeypatch.setattr(
    os,
    "access",
    lambda path, mode: (
      False
      if str(path) == str(tmp_path) and mode == os.W_OK
      else real_access(path, mode)
    ),
  )
  with pytest.raises(AeasdError, match=r"workdir .*: not writable"):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_tensorboard_without_its_extra_says_which_extra(tiny_config, tmp_path):
  if importlib.util.find_spec("tensorboardX") is not None:
    pytest.skip("tensorboardX is installed")
  tiny_config.train.tensorboard = True
  with pytest.raises(AeasdError, match=r"pip install -e \.\[tensorboard\]"):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_dev_auc_selection_keeps_the_weights_of_the_best_auc(
  tiny_config, tmp_path
):
  tiny_config.train.epochs = 3
  tiny_config.train.select_by = "dev_auc"
  tiny_config.train.select_every = 1
  state = train.train_and_evaluate(tiny_config, tmp_path)
  records = [
    r
    for r in metric_log.read_records(layout.Workdir(tmp_path).metrics_file)
    if "epoch" in r
  ]
  aucs = np.asarray([list(r["dev_auc"].values()) for r in records])
  np.testing.assert_allclose(
    -np.asarray(state.best.metric), aucs.max(axis=0), rtol=1e-6
  )
  # Ties keep the earlier epoch: selection needs a strict improvement.
  np.testing.assert_array_equal(
    np.asarray(state.best.epoch), aucs.argmax(axis=0) + 1
  )
  # The kept weights are the ones that scored it.
  report = evaluate.evaluate(tmp_path)
  names = list(records[0]["dev_auc"])
  for name, best_auc in zip(names, aucs.max(axis=0)):
    by_id = report["dev"][name.split("/")[0]]
    assert np.mean([m["auc"] for m in by_id.values()]) == pytest.approx(
      best_auc, abs=1e-9
    )


@pytest.mark.numerics
def test_bfloat16_training_follows_float32(tiny_config, tmp_path):
  curves = {}
  for dtype in ("float32", "bfloat16"):
    tiny_config.model.compute_dtype = dtype
    tiny_config.train.epochs = 4
    train.train_and_evaluate(tiny_config, tmp_path / dtype)
    records = [
      r
      for r in map(json.loads, (tmp_path / dtype / "metrics.jsonl").open())
      if "epoch" in r
    ]
    curves[dtype] = np.asarray(
      [list(r["train_loss"].values()) for r in records]
    )
  assert np.all(curves["bfloat16"][-1] < curves["bfloat16"][0])
  # Not a rounding equivalence: bfloat16 itself changes the results. Its 5
  # hidden layers round inputs and outputs to 8 bits (u = 2**-8), moving a
  # reconstruction by up to 10 u = 3.9% of its size; a squared error moves by
  # twice that times |reconstruction| / |error| (<= 2 here: features of 19 dB
  # rms, errors of >= 9 dB rms): up to 16% per value. Round-to-nearest makes
  # those errors unbiased, so the mean over an epoch's 7 x 64 x 80 values
  # shrinks them by sqrt(35840) = 190, to ~0.08%; 5% leaves 60 times that for
  # the runs drifting apart over 4 epochs. Float32 reordering on another CPU
  # (~1e-7) is far below.
  np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=0.05)
