"""From config.data to a loaded feature cache and the per-group clip split.

Training and evaluation both start here, so they always agree on which clips
belong to which group.
"""

import hashlib
import json
import logging
import os
import pathlib

from aeasd_jax import cache
from aeasd_jax import data
from aeasd_jax import dcase
from aeasd_jax import synth
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)


def cache_root(config):
  """config.data.cache_dir, or the user's cache folder when it is empty."""
  if config.data.cache_dir:
    return pathlib.Path(config.data.cache_dir).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return pathlib.Path(base) / "aeasd_jax"


def data_root(config):
  """The dataset folder: config.data.root, or the bundled synthetic data.

  A root that is given but missing is an error; it never falls back to the
  synthetic data.
  """
  if config.data.root:
    root = pathlib.Path(config.data.root).expanduser()
    if not root.is_dir():
      raise AeasdError(f"config.data.root={config.data.root}: no such folder;"
                       " expected the DCASE layout <root>/dev_data/<type>/..."
                       " (leave it empty for the bundled synthetic data)")
    return root
  params = dict(seed=config.synth.seed, clips_per_id=config.synth.clips_per_id,
                seconds=config.synth.seconds,
                # int(): soundfile refuses 16000.0, which check_config allows.
                sample_rate=int(config.features.sample_rate))
  tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
  root = cache_root(config) / "synthetic" / tag.hexdigest()[:12]
  if not root.is_dir():
    log.info("generating the bundled synthetic dataset into %s", root)
    try:
      synth.generate(root, **params)
    except FileExistsError:
      pass  # Another process generated it first; generation is atomic.
  log.info("no config.data.root given: using the bundled synthetic"
           " dataset at %s", root)
  return root


def feature_params(config):
  return dict(config.features)


def load(config, *, show_progress=True):
  """Discovers the clips, loads (or builds) their cache, splits the groups.

  Returns:
    (cache.FeatureCache, list of data.Group)
  """
  root = data_root(config)
  clips = dcase.discover(root, tuple(config.data.machine_types),
                         config.data.dev_dir, config.data.eval_dir)
  features = cache.build_or_load(
      clips, feature_params(config), cache_root(config) / "features",
      resample=config.data.resample,
      skip_bad_files=config.data.skip_bad_files,
      num_workers=config.data.decode_workers,
      batch_size=config.data.feature_batch,
      batch_seconds=config.data.feature_batch_seconds,
      show_progress=show_progress)
  groups = data.make_groups(
      features.clips, group_by=config.data.group_by,
      use_eval_train=config.data.use_eval_train,
      validation_split=config.train.validation_split, seed=config.seed)
  return features, groups
