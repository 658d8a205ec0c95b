"""train.select_by="last", the DCASE baselines' choice: the final weights.

The held-out clips still give the validation loss curve, as Keras'
validation_split does; nothing is selected by it.
"""

import logging
import math

import pytest

import helpers

from aeasd_jax.errors import AeasdError
from aeasd_jax.training import config_check
from aeasd_jax.training import train
from aeasd_jax.workdir import layout
from aeasd_jax.workdir import metric_log


def test_last_keeps_the_final_weights_and_logs_the_validation_loss(
  tiny_config, tmp_path, caplog
):
  tiny_config.train.select_by = "last"
  tiny_config.data.machine_types = ("fan",)
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(tiny_config, tmp_path)
  helpers.assert_best_equals_latest(tmp_path)
  records = metric_log.read_records(layout.Workdir(tmp_path).metrics_file)
  epochs = [r for r in records if "epoch" in r]
  assert [r["epoch"] for r in epochs] == [1, 2]
  # The curve is there (finite: clips were held out), though unused.
  assert all(math.isfinite(v) for r in epochs for v in r["val_loss"].values())
  assert "no model selection" not in caplog.text


def test_last_needs_no_held_out_clips(tiny_config):
  tiny_config.train.validation_split = 0.0
  tiny_config.train.select_by = "last"
  config_check.check_config(tiny_config)
  tiny_config.train.select_by = "val_loss"
  with pytest.raises(AeasdError, match="train.validation_split"):
    config_check.check_config(tiny_config)
