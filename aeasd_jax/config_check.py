"""Checks a config before any work starts, naming the bad setting.

A wrong value otherwise fails minutes later, deep inside a compiled program.
"""

import numbers

from aeasd_jax import models
from aeasd_jax import scoring
from aeasd_jax.errors import AeasdError


def _require(ok, setting, value, expected):
  if not ok:
    raise AeasdError(f"config.{setting}={value!r}: expected {expected}")


def lookup(config, setting):
  """The value of a dotted setting such as "train.batch_size"."""
  value = config
  for part in setting.split("."):
    value = value[part]
  return value


def _positive_int(config, setting):
  value = lookup(config, setting)
  _require(isinstance(value, numbers.Integral) and not isinstance(value, bool)
           and value > 0, setting, value, "a positive integer")


def _number_in(config, setting, low, high, expected):
  value = lookup(config, setting)
  _require(isinstance(value, numbers.Real) and not isinstance(value, bool)
           and low <= value <= high, setting, value, expected)


def _choice(config, setting, choices):
  value = lookup(config, setting)
  _require(value in choices, setting, value, f"one of {sorted(choices)}")


def check_config(config):
  """Raises AeasdError for the first setting that is out of range."""
  for setting in ("model.frames", "model.n_mels", "model.hidden",
                  "model.depth", "model.bottleneck", "train.epochs",
                  "train.batch_size", "train.num_seeds", "train.select_every",
                  "train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_every", "score.batch_windows",
                  "data.decode_workers", "data.feature_batch",
                  "data.stream_chunk_clips",
                  "synth.clips_per_id"):
    _positive_int(config, setting)
  _choice(config, "model.name", set(models.MODELS))
  _choice(config, "model.kl_reduction", {"mean", "sum"})
  _choice(config, "model.compute_dtype", {"float32", "bfloat16"})
  _choice(config, "data.group_by", {"type", "type_id"})
  _choice(config, "train.select_by", {"val_loss", "dev_auc"})
  _choice(config, "score.pooling", set(scoring.POOLINGS))
  _require(config.model.frames % 2 == 1 or
           not models.MODELS[config.model.name].interpolate, "model.frames",
           config.model.frames, "an odd number for IDNN (a centre frame)")
  _number_in(config, "train.learning_rate", 1e-12, 1e3, "a number in (0, 1e3]")
  _number_in(config, "train.adam_eps", 0.0, 1.0, "a number in [0, 1]")
  _number_in(config, "train.validation_split", 0.0, 0.9,
             "a fraction in [0, 0.9]")
  _number_in(config, "model.bn_momentum", 0.0, 1.0, "a number in [0, 1]")
  _number_in(config, "model.bn_epsilon", 1e-12, 1.0, "a small positive number")
  _number_in(config, "model.beta", 0.0, 1e6, "a number >= 0")
  _number_in(config, "score.gwrp_decay", 0.0, 1.0, "a number in [0, 1]")
  _number_in(config, "score.threshold_percentile", 0.0, 100.0,
             "a percentile in (0, 100)")
  _number_in(config, "synth.seconds", 0.1, 600.0, "seconds in [0.1, 600]")
  if config.train.select_by == "val_loss":
    _require(config.train.validation_split > 0, "train.validation_split",
             config.train.validation_split,
             "a fraction > 0 when train.select_by='val_loss'")
  _require(config.features.n_mels == config.model.n_mels, "model.n_mels",
           config.model.n_mels, f"features.n_mels={config.features.n_mels}")


def check_devices(config, num_devices):
  """The global batch is split evenly across devices, or not at all."""
  batch = config.train.batch_size
  if batch % num_devices:
    lower = max(num_devices, batch - batch % num_devices)
    raise AeasdError(
        f"config.train.batch_size={batch} does not divide by the"
        f" {num_devices} devices; expected a multiple of {num_devices}, such"
        f" as {lower} or {lower + num_devices}")
