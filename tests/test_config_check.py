"""Tests for aeasd_jax.config_check: every bad setting is named up front."""

import importlib
import math
import pathlib

import ml_collections
import pytest

from aeasd_jax.training import config_check
from aeasd_jax.errors import AeasdError
from configs import default

NAN, INF = math.nan, math.inf

_CONFIGS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
  if p.stem != "__init__"
)


def _set(config, setting, value):
  """`config` with `setting` holding exactly `value`, of whatever type.

  ConfigDict refuses most wrong types, and turns True or 100 into 1.0 or
  100.0 in a float field, even under ignore_type(); a config file can still
  build a section of its own, so check_config must catch them too.
  """
  section, key = setting.split(".")
  with config.ignore_type():
    config[section] = ml_collections.ConfigDict(
      {**config[section].to_dict(), key: value}
    )
  return config


@pytest.mark.parametrize("name", _CONFIGS)
def test_shipped_configs_pass(name):
  config_check.check_config(
    importlib.import_module(f"configs.{name}").get_config()
  )


@pytest.mark.parametrize(
  "setting,value,expected",
  [
    # Feature settings, checked before any clip is cached.
    ("features.hop_length", 0, "an integer in [1, 1024] (at most n_fft"),
    ("features.hop_length", -512, "an integer in [1, 1024]"),
    ("features.hop_length", 256.0, "an integer in [1, 1024]"),
    ("features.hop_length", 2048, "(at most n_fft=1024)"),
    ("features.n_fft", 0, "an integer in [1, 65536]"),
    ("features.n_fft", -1024, "an integer in [1, 65536]"),
    ("features.n_fft", 1024.0, "an integer in [1, 65536]"),
    ("features.n_fft", 10**10, "an integer in [1, 65536]"),
    ("features.n_mels", 0, "an integer in [1, 513]"),
    ("features.n_mels", -8, "an integer in [1, 513]"),
    ("features.n_mels", 16.0, "an integer in [1, 513]"),
    ("features.n_mels", True, "an integer in [1, 513]"),
    ("features.n_mels", 514, "n_fft // 2 + 1 frequency bins for n_fft=1024"),
    ("features.power", 0.0, "a positive number"),
    ("features.power", -2.0, "a positive number"),
    ("features.power", "2", "a positive number"),
    ("features.power", NAN, "a positive number"),
    ("features.power", INF, "a positive number"),
    ("features.power", True, "a positive number"),
    ("features.sample_rate", 0, "a positive whole number of Hz"),
    ("features.sample_rate", -16000, "a positive whole number of Hz"),
    ("features.sample_rate", 16000.5, "a positive whole number of Hz"),
    ("features.sample_rate", NAN, "a positive whole number of Hz"),
    ("features.sample_rate", "16000", "a positive whole number of Hz"),
    ("features.fmin", -1.0, "a number of Hz in [0, 8000)"),
    ("features.fmin", 8000.0, "a number of Hz in [0, 8000)"),
    ("features.fmin", NAN, "a number of Hz in [0, 8000)"),
    ("features.fmax", 0.0, "None or a number of Hz in (0, 8000]"),
    ("features.fmax", 8000.5, "None or a number of Hz in (0, 8000]"),
    ("features.fmax", NAN, "None or a number of Hz in (0, 8000]"),
    ("features.htk", 1, "True or False"),
    ("features.norm", "l2", "'slaney' or None"),
    ("features.norm", ["slaney"], "'slaney' or None"),
    ("features.pad_mode", "edge", "'constant' or 'reflect'"),
    ("features.log_floor", 0.0, "None or a positive number"),
    ("features.log_floor", -1e-10, "None or a positive number"),
    ("features.log_floor", NAN, "None or a positive number"),
    # Data settings.
    ("data.feature_batch_seconds", 0.0, "a number in (0, inf)"),
    ("data.feature_batch_seconds", -1.0, "a number in (0, inf)"),
    ("data.feature_batch_seconds", NAN, "a number in (0, inf)"),
    ("data.feature_batch_seconds", INF, "a number in (0, inf)"),
    ("data.feature_batch_seconds", True, "a number in (0, inf)"),
    ("data.feature_batch", 0, "a positive integer"),
    ("data.resample", "yes", "True or False"),
    ("data.skip_bad_files", 1, "True or False"),
    ("data.use_eval_train", None, "True or False"),
    ("data.device_resident", "auto", "None, True or False"),
    ("data.device_resident", 0, "None, True or False"),
    # Every range: its bounds as the message states them, no NaN, no Inf,
    # no bool standing in for a number.
    ("score.threshold_percentile", 100, "a number in (0, 100)"),
    ("score.threshold_percentile", 100.0, "a number in (0, 100)"),
    ("score.threshold_percentile", 0.0, "a number in (0, 100)"),
    ("score.threshold_percentile", NAN, "a number in (0, 100)"),
    ("score.threshold_percentile", True, "a number in (0, 100)"),
    ("train.learning_rate", 0.0, "a number in (0, 1e3]"),
    ("train.learning_rate", 1000.5, "a number in (0, 1e3]"),
    ("train.learning_rate", NAN, "a number in (0, 1e3]"),
    ("train.learning_rate", True, "a number in (0, 1e3]"),
    ("train.adam_eps", -1e-8, "a number in [0, 1]"),
    ("train.adam_eps", NAN, "a number in [0, 1]"),
    ("train.validation_split", 0.95, "a number in [0, 0.9]"),
    ("train.validation_split", NAN, "a number in [0, 0.9]"),
    ("model.bn_momentum", 1.5, "a number in [0, 1]"),
    ("model.bn_momentum", NAN, "a number in [0, 1]"),
    ("model.bn_momentum", True, "a number in [0, 1]"),
    ("model.bn_epsilon", 0.0, "a number in (0, 1]"),
    ("model.bn_epsilon", NAN, "a number in (0, 1]"),
    ("model.beta", -1.0, "a number in [0, 1e6]"),
    ("model.beta", 2e6, "a number in [0, 1e6]"),
    ("model.beta", 10**400, "a number in [0, 1e6]"),
    ("model.beta", INF, "a number in [0, 1e6]"),
    ("score.gwrp_decay", 1.5, "a number in [0, 1]"),
    ("score.gwrp_decay", NAN, "a number in [0, 1]"),
    ("score.gwrp_decay", False, "a number in [0, 1]"),
    ("synth.seconds", 0.2, "a number in [0.5, 600]"),
    ("synth.seconds", NAN, "a number in [0.5, 600]"),
    ("train.batch_size", True, "a positive integer"),
    ("model.name", ["AE"], "one of"),
    ("score.pooling", None, "one of"),
  ],
)
def test_bad_setting_is_named(setting, value, expected):
  config = _set(default.get_config(), setting, value)
  with pytest.raises(AeasdError) as info:
    config_check.check_config(config)
  message = str(info.value)
  assert message.startswith(f"config.{setting}={value!r}: expected "), message
  assert expected in message, message


def test_unknown_feature_setting_is_named():
  config = default.get_config()
  config.features.nfft = 512
  with pytest.raises(
    AeasdError,
    match=r"^config\.features\.nfft: not a"
    r" log-mel setting; expected only \['sample_rate'",
  ):
    config_check.check_config(config)


@pytest.mark.parametrize(
  "setting,value",
  [
    ("features.sample_rate", 16000.0),
    ("features.sample_rate", 22050),
    ("features.n_fft", 65536),
    ("features.hop_length", 1024),
    ("features.hop_length", 1),
    ("features.n_mels", 513),
    ("features.power", 1.0),
    ("features.fmin", 7999.0),
    ("features.fmax", 8000.0),
    ("features.htk", True),
    ("features.norm", None),
    ("features.pad_mode", "reflect"),
    ("features.log_floor", 1e-10),
    ("data.feature_batch_seconds", 0.5),
    ("data.feature_batch_seconds", 10**6),
    ("data.device_resident", False),
    ("score.threshold_percentile", 1e-3),
    ("score.threshold_percentile", 99.999),
    ("train.learning_rate", 1e3),
    ("train.validation_split", 0.9),
    ("model.bn_momentum", 1.0),
    ("model.bn_epsilon", 1.0),
    ("model.beta", 0.0),
    ("score.gwrp_decay", 0.0),
    ("synth.seconds", 600),
  ],
)
def test_edge_values_are_accepted(setting, value):
  config = _set(default.get_config(), setting, value)
  if setting == "features.n_mels":
    config.model.n_mels = value
  config_check.check_config(config)
