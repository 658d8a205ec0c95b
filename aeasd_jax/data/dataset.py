"""From config.data to a loaded feature cache and the per-group clip split.

Training and evaluation both start here, so they always agree on which clips
belong to which group.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib

import numpy as np

from aeasd_jax.data import cache
from aeasd_jax import cache_dir
from aeasd_jax.data import dcase
from aeasd_jax import synth
from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown

log = logging.getLogger(__name__)


def data_root(config):
  """The dataset folder: config.data.root, or the bundled synthetic data.

  A root that is given but missing is an error; it never falls back to the
  synthetic data.
  """
  root = _root_path(config)
  if config.data.root:
    if not root.is_dir():
      raise AeasdError(
        f"config.data.root={config.data.root}: no such folder;"
        " expected the DCASE layout <root>/dev_data/<type>/..."
        " (leave it empty for the bundled synthetic data)"
      )
    return root
  if not root.is_dir():
    log.info("generating the bundled synthetic dataset into %s", root)
    try:
      synth.generate(root, **_synth_params(config))
    except FileExistsError:
      pass  # Another process generated it first; generation is atomic.
  log.info(
    "no config.data.root given: using the bundled synthetic dataset at %s", root
  )
  return root


def _synth_params(config):
  return dict(
    year=config.synth.year,
    seed=config.synth.seed,
    clips_per_id=config.synth.clips_per_id,
    seconds=config.synth.seconds,
    # int(): soundfile refuses 16000.0, which check_config allows.
    sample_rate=int(config.features.sample_rate),
  )


def _root_path(config):
  """Where data_root looks, without checking or generating anything."""
  if config.data.root:
    return pathlib.Path(config.data.root).expanduser()
  tag = hashlib.sha256(
    json.dumps(_synth_params(config), sort_keys=True).encode()
  )
  return cache_dir.root(config) / "synthetic" / tag.hexdigest()[:12]


def data_identity(config, features, groups):
  """What identifies the data a run trains on, wherever it now lies.

  A digest over the training clips' paths below the data root and the
  digests of their bytes (the feature cache reads every byte anyway).

  Returns:
    {"fingerprint": hex, "training_clips": count, "root": resolved root}
  """
  root = _root_path(config).resolve()
  clips = sorted(
    (os.path.relpath(features.clips[c].path, root), features.digests[c])
    for g in groups
    for c in (*g.train_clips, *g.val_clips)
  )
  digest = hashlib.sha256()
  channel = audio_channel(config, config.data.dcase_year)
  # One channel of the same files is other data; "mean" adds nothing, so
  # fingerprints of runs before the setting existed still match.
  if channel != "mean":
    digest.update(f"channel {channel}\n".encode())
  for relative, content in clips:
    digest.update(f"{relative}\0{content}\n".encode())
  return {
    "fingerprint": digest.hexdigest(),
    "training_clips": len(clips),
    "root": str(root),
  }


def feature_params(config):
  return dict(config.features)


def dcase_year(config):
  """config.data.dcase_year, or the year the data root's names tell.

  Raises:
    AeasdError: no year was set and the names fit none.
  """
  if config.data.dcase_year is not None:
    return config.data.dcase_year
  root = data_root(config)
  year = dcase.detect_year(root, config.data.dev_dir)
  if year is None:
    raise AeasdError(
      f"{root}: the dev training clips' names fit no DCASE year; expected"
      " normal_id_XX_######## (2020) or"
      f" {dcase.name_rules(2022).labelled_form} (2021 on), or set"
      " config.data.dcase_year"
    )
  return year


def audio_channel(config, year):
  """config.data.channel, or the year's baseline's: 0 in 2026, else mean."""
  if config.data.channel:
    return config.data.channel
  return "0" if year == 2026 else "mean"


def resolve_year_and_channel(config):
  """A copy of `config` whose data.dcase_year and data.channel are concrete.

  train.py stores it, so evaluate.py reads the year and channel the run
  trained with instead of telling them again.
  """
  config = config.copy_and_resolve_references()
  config.data.dcase_year = dcase_year(config)
  config.data.channel = audio_channel(config, config.data.dcase_year)
  return config


def clip_samples(config):
  """Samples of every clip example (config.data.clip_seconds), or None."""
  if config.data.clip_seconds is None:
    return None
  return int(round(config.data.clip_seconds * config.features.sample_rate))


def load(config, *, show_progress=True, waveforms=False):
  """Discovers the clips, loads (or builds) their cache, splits the groups.

  With config.data.clip_seconds the cache holds clip examples of one length
  (and, with `waveforms`, their waveforms) for the classifiers.

  Returns:
    (cache.FeatureCache, list of data.Group)
  """
  root = data_root(config)
  year = dcase_year(config)
  types = tuple(config.data.machine_types)
  clips = dcase.discover(
    root,
    types,
    config.data.dev_dir,
    config.data.eval_dir,
    year=year,
    use_supplemental=config.data.use_supplemental,
  )
  if not config.data.use_supplemental:
    for folder in dcase.supplemental_folders(
      root,
      types
      or dcase.all_machine_types(
        root, config.data.dev_dir, config.data.eval_dir
      ),
      config.data.dev_dir,
      config.data.eval_dir,
    ):
      log.info(
        "%s: left out, as the official baseline does; set"
        " config.data.use_supplemental=True to train on it too",
        folder,
      )
  features = cache.build_or_load(
    clips,
    feature_params(config),
    cache_dir.root(config) / "features",
    resample=config.data.resample,
    channel=audio_channel(config, year),
    skip_bad_files=config.data.skip_bad_files,
    num_workers=config.data.decode_workers,
    batch_size=config.data.feature_batch,
    batch_seconds=config.data.feature_batch_seconds,
    show_progress=show_progress,
    clip_samples=clip_samples(config),
    keep_waveforms=waveforms,
  )
  groups = make_groups(
    features.clips,
    group_by=config.data.group_by,
    use_eval_train=config.data.use_eval_train,
    validation_split=config.train.validation_split,
    seed=config.seed,
  )
  return features, groups


@dataclasses.dataclass(frozen=True)
class Group:
  """The clips one model (times seeds) trains on, and those it is tested on."""

  name: str  # "fan", or "fan/id_00" with group_by="type_id".
  train_clips: np.ndarray  # Cache clip indices used for gradient steps.
  val_clips: np.ndarray  # Normal training clips held out for validation.
  test_clips: np.ndarray  # Dev and eval test clips of this group.


def merged_group(groups, name):
  """One Group of every group's clips: what one model of all types sees."""
  merged = lambda field: np.sort(
    np.concatenate([getattr(g, field) for g in groups])
  )
  return Group(
    name, merged("train_clips"), merged("val_clips"), merged("test_clips")
  )


def make_groups(clips, *, group_by, use_eval_train, validation_split, seed):
  """Splits cached clips into per-group train, validation and test sets.

  Args:
    clips: the cache's dcase.Clip tuple; indices refer to it.
    group_by: "type" (one model per machine type, as the baselines) or
      "type_section" (one per machine type and section, or id in 2020;
      "type_id" is the same). A section's domains share its model.
    use_eval_train: also train on eval_data/*/train (DCASE's additional
      training data).
    validation_split: fraction of each group's training clips held out.
    seed: fixes which clips are held out.

  Returns:
    Groups sorted by name.
  """

  def group_name(clip):
    if group_by == "type":
      return clip.machine_type
    return f"{clip.machine_type}/{clip.section}"

  train, test, left_out = {}, {}, set()
  for i, clip in enumerate(clips):
    if clip.split == "test":
      test.setdefault(group_name(clip), []).append(i)
    elif clip.subset == "dev" or use_eval_train:
      train.setdefault(group_name(clip), []).append(i)
    else:
      left_out.add(group_name(clip))
  groups = []
  for name in sorted(train):
    indices = np.asarray(train[name], np.int64)
    rng = np.random.default_rng([seed, window_data.stable_hash(name)])
    shuffled = rng.permutation(indices)
    num_val = int(round(validation_split * len(indices)))
    if validation_split > 0 and len(indices) > 1:
      num_val = min(max(num_val, 1), len(indices) - 1)
    groups.append(
      Group(
        name,
        np.sort(shuffled[num_val:]),
        np.sort(shuffled[:num_val]),
        np.asarray(test.get(name, []), np.int64),
      )
    )
  if not groups:
    raise AeasdError(
      "no training clips found; expected <type>/train/*.wav"
      " under config.data.root"
    )
  # A test clip of a group without a model would silently vanish from the
  # scores and from the result files of a submission.
  untrained = sorted(set(test) - set(train))
  if untrained:
    raise AeasdError(
      f"no training clips for {', '.join(untrained)} with"
      f" config.data.group_by={group_by!r} and"
      f" config.data.use_eval_train={use_eval_train}, so their test clips"
      " would go unscored; expected"
      f" {_training_clips_advice(clips, test, train, left_out, untrained[0])}"
    )
  return groups


def _training_clips_advice(clips, test, train, left_out, name):
  """What would give group `name` training clips: a setting, or files."""
  machine_type = name.split("/")[0]
  if name in left_out:
    return (
      f"config.data.use_eval_train=True (the eval set's training clips of"
      f" {name} are left out)"
    )
  if any(g.split("/")[0] == machine_type for g in train):
    return (
      f"training clips for every section of {machine_type}, or"
      " config.data.group_by='type' (one model for all its sections)"
    )
  # A test folder's type folder holds the train/ folder that is missing
  # or empty (2021's source_test/ too).
  folder = pathlib.Path(clips[test[name][0]].path).parent.parent / "train"
  return f"its training clips in {shown(folder)}"
