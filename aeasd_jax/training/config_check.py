"""Checks a config before any work starts, naming the bad setting.

A wrong value otherwise fails minutes later, deep inside a compiled program.
"""

import math
import numbers
import os

import jax

from aeasd_jax import cache_dir
from aeasd_jax import runtime
from aeasd_jax.data import dcase
from aeasd_jax.data import features
from aeasd_jax.training import fused
from aeasd_jax.data import labels
from aeasd_jax.models import autoencoders
from aeasd_jax.models import registry
from aeasd_jax.models import stgram_mfn
from aeasd_jax.scoring import reconstruction
from aeasd_jax import synth
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown


def _require(ok, setting, value, expected):
  if not ok:
    raise AeasdError(f"config.{setting}={value!r}: expected {expected}")


def lookup(config, setting):
  """The value of a dotted setting such as "train.batch_size"."""
  value = config
  for part in setting.split("."):
    value = value[part]
  return value


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(config, setting):
  value = lookup(config, setting)
  _require(_is_int(value) and value > 0, setting, value, "a positive integer")


def _seed(config, setting, high=math.inf):
  value = lookup(config, setting)
  _require(
    _is_int(value) and 0 <= value <= high,
    setting,
    value,
    "an integer >= 0" if high == math.inf else f"an integer in [0, {high}]",
  )


def _number_in(config, setting, interval):
  """Requires a finite number, not a bool, inside `interval`.

  `interval` such as "(0, 100)" or "[0, inf)" is both the check and the
  message, so the two cannot disagree on which bounds are open.
  """
  value = lookup(config, setting)
  low, high = (float(bound) for bound in interval[1:-1].split(","))
  # Comparisons, not math.isfinite, which overflows on a huge int.
  ok = (
    isinstance(value, numbers.Real)
    and not isinstance(value, bool)
    and -math.inf < value < math.inf
    and (low < value if interval[0] == "(" else low <= value)
    and (value < high if interval[-1] == ")" else value <= high)
  )
  _require(ok, setting, value, f"a number in {interval}")


def _bool(config, setting):
  value = lookup(config, setting)
  _require(isinstance(value, bool), setting, value, "True or False")


def _choice(config, setting, choices):
  value = lookup(config, setting)
  # Every choice is a string; `in` on a set would raise for a list value.
  _require(
    isinstance(value, str) and value in choices,
    setting,
    value,
    f"one of {sorted(choices)}",
  )


def _string(config, setting):
  value = lookup(config, setting)
  _require(isinstance(value, str), setting, value, "a string")


def _folder(config, setting, path):
  """A path setting leads to `path`, which must be a usable folder."""
  problem = runtime.path_problem(path, folder=True)
  if problem:
    value = lookup(config, setting)
    where = "" if os.fspath(path) == value else f" (at {shown(path)})"
    raise AeasdError(f"config.{setting}={value!r}{where}: {problem}")


def check_config(config):
  """Raises AeasdError for the first setting that is out of range."""
  # First: model.n_mels refers to features.n_mels, and a bad feature setting
  # should be named as such.
  features.check_params(dict(config.features), prefix="config.features.")
  _check_run(config)
  _check_model(config)
  _check_data(config)
  _check_train(config)
  _check_score(config)
  _check_synth(config)


def _check_run(config):
  # Without x64, JAX keys keep the low 32 bits: seed 2**32 would repeat 0.
  _seed(config, "seed", high=2**32 - 1)
  _number_in(config, "workdir_lock_stale_s", "(0, inf)")
  for setting in ("compile_cache_dir", "data.root", "data.cache_dir"):
    _string(config, setting)
  # Empty settings lead to the user's cache folder: it must do too.
  _folder(config, "data.cache_dir", cache_dir.root(config))
  compile_cache = config.compile_cache_dir
  if compile_cache != "off":
    _folder(
      config,
      "compile_cache_dir",
      os.path.expanduser(compile_cache) or cache_dir.root(config) / "jax",
    )
  if config.data.root:
    _folder(config, "data.root", os.path.expanduser(config.data.root))


def _check_model(config):
  for setting in (
    "model.frames",
    "model.n_mels",
    "model.hidden",
    "model.depth",
    "model.bottleneck",
  ):
    _positive_int(config, setting)
  _choice(config, "model.name", set(registry.SPECS))
  _choice(config, "model.kl_reduction", {"mean", "sum"})
  _choice(config, "model.init", set(autoencoders.INITS))
  _choice(config, "model.vae", set(autoencoders.VAES))
  _choice(config, "model.compute_dtype", {"float32", "bfloat16", "float64"})
  # Without x64 JAX silently computes "float64" in float32.
  _require(
    config.model.compute_dtype != "float64" or jax.config.jax_enable_x64,
    "model.compute_dtype",
    config.model.compute_dtype,
    "jax_enable_x64 for float64 (set JAX_ENABLE_X64=1 before starting Python)",
  )
  _positive_int(config, "model.embedding")
  _choice(config, "model.bottlenecks", set(stgram_mfn.BOTTLENECKS))
  _number_in(config, "model.arcface_s", "(0, 1e3]")
  # Past pi/2 the margin turns the own class's cosine down for every angle.
  _number_in(config, "model.arcface_m", "[0, 1.5707963]")
  _require(
    config.model.frames % 2 == 1 or not registry.interpolates(config),
    "model.frames",
    config.model.frames,
    "an odd number for IDNN (a centre frame)",
  )
  for setting, interval in (
    ("model.bn_momentum", "[0, 1]"),
    ("model.bn_epsilon", "(0, 1]"),
    ("model.beta", "[0, 1e6]"),
  ):
    _number_in(config, setting, interval)
  _require(
    config.features.n_mels == config.model.n_mels,
    "model.n_mels",
    config.model.n_mels,
    f"features.n_mels={config.features.n_mels}",
  )


def _check_data(config):
  for setting in (
    "data.decode_workers",
    "data.feature_batch",
    "data.stream_chunk_clips",
  ):
    _positive_int(config, setting)
  _choice(config, "data.group_by", {"type", "type_section", "type_id"})
  for setting in ("data.dev_dir", "data.eval_dir"):
    value = lookup(config, setting)
    _require(
      isinstance(value, str)
      and value.strip()
      and not os.path.isabs(value)
      and runtime.is_utf8(value),
      setting,
      value,
      "a UTF-8 folder name inside data.root, such as 'dev_data'",
    )
  types = config.data.machine_types
  _require(
    isinstance(types, (tuple, list))
    and all(
      isinstance(t, str) and t and not t.startswith(".") and runtime.is_utf8(t)
      for t in types
    ),
    "data.machine_types",
    types,
    "a tuple of machine type folder names such as ('fan', 'valve'), or ()"
    " for every type",
  )
  year = config.data.dcase_year
  _require(
    year is None or (_is_int(year) and year in dcase.YEARS),
    "data.dcase_year",
    year,
    f"None (tell from the names) or a year in {dcase.YEARS[0]}-"
    f"{dcase.YEARS[-1]}",
  )
  channel = config.data.channel
  _require(
    isinstance(channel, str) and (channel in ("", "mean") or channel.isdigit()),
    "data.channel",
    channel,
    "'mean', a channel index such as '0', or '' for the year's default",
  )
  _number_in(config, "data.feature_batch_seconds", "(0, inf)")
  _choice(config, "data.labels", set(labels.SCHEMES))
  if config.data.clip_seconds is not None:
    _number_in(config, "data.clip_seconds", "(0, 3600]")
  # model.name is checked by now.
  _require(
    config.data.clip_seconds is not None or not registry.is_classifier(config),
    "data.clip_seconds",
    config.data.clip_seconds,
    f"the seconds of every clip example for model.name={config.model.name!r}"
    " (a classifier sees whole clips: 10.0 as STgram-MFN)",
  )
  for setting in (
    "data.use_eval_train",
    "data.resample",
    "data.skip_bad_files",
    "data.use_supplemental",
  ):
    _bool(config, setting)
  resident = config.data.device_resident
  _require(
    resident is None or isinstance(resident, bool),
    "data.device_resident",
    resident,
    "None, True or False",
  )


def _check_train(config):
  for setting in (
    "train.epochs",
    "train.batch_size",
    "train.num_seeds",
    "train.select_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
  ):
    _positive_int(config, setting)
  _choice(
    config, "train.select_by", {"last", "val_loss", "dev_auc", "dev_auc_pauc"}
  )
  _choice(config, "train.lr_schedule", {"constant", "cosine"})
  _seed(config, "train.cosine_start_epoch")
  _number_in(config, "train.cosine_final", "[0, 1]")
  _choice(config, "train.kernels", set(fused.KERNELS))
  _bool(config, "train.pallas_interpret")
  _bool(config, "train.tensorboard")
  fused.resolve_kernels(config)
  for setting, interval in (
    ("train.learning_rate", "(0, 1e3]"),
    ("train.adam_eps", "[0, 1]"),
    ("train.validation_split", "[0, 0.9]"),
  ):
    _number_in(config, setting, interval)
  if config.train.select_by == "val_loss":
    _require(
      config.train.validation_split > 0,
      "train.validation_split",
      config.train.validation_split,
      "a fraction > 0 when train.select_by='val_loss'",
    )


def _check_score(config):
  _positive_int(config, "score.batch_windows")
  _positive_int(config, "score.batch_clips")
  _positive_int(config, "score.segment_bands")
  _number_in(config, "score.segment_percentile", "(0, 100)")
  _choice(config, "score.method", set(registry.spec(config).scores))
  _choice(config, "score.pooling", set(reconstruction.POOLINGS))
  _number_in(config, "score.gwrp_decay", "[0, 1]")
  # 100 would put the threshold at the gamma fit's +Infinity.
  _number_in(config, "score.threshold_percentile", "(0, 100)")


def _check_synth(config):
  _positive_int(config, "synth.clips_per_id")
  _seed(config, "synth.seed")
  _require(
    _is_int(config.synth.year) and config.synth.year in synth.YEARS,
    "synth.year",
    config.synth.year,
    f"one of {list(synth.YEARS)}",
  )
  _number_in(
    config, "synth.seconds", f"[{synth.MIN_SECONDS}, {synth.MAX_SECONDS:g}]"
  )


def check_devices(config, num_devices):
  """The global batch is split evenly across devices, or not at all."""
  batch = config.train.batch_size
  if batch % num_devices:
    lower = max(num_devices, batch - batch % num_devices)
    raise AeasdError(
      f"config.train.batch_size={batch} does not divide by the"
      f" {num_devices} devices; expected a multiple of {num_devices}, such"
      f" as {lower} or {lower + num_devices}"
    )
