"""Scores of every group's models and what they give: AUC tables, thresholds.

Training (dev AUC selection, thresholds) and evaluation both score groups
through here, so this module imports neither.
"""

import hashlib
import logging
from typing import NamedTuple

import jax
import numpy as np

from aeasd_jax.data import labels
from aeasd_jax.models import registry
from aeasd_jax.scoring import classifier
from aeasd_jax.scoring import mahalanobis
from aeasd_jax.metrics import result_tables
from aeasd_jax.scoring import neighbours
from aeasd_jax.scoring import reconstruction
from aeasd_jax.scoring import windows
from aeasd_jax.data import window_data
from aeasd_jax.workdir import file_io

log = logging.getLogger(__name__)


def score_models(
  config, features, setup, params, batch_stats, clip_lists, statistics=None
):
  """Per-model scores of per-model clip lists, in one set of device calls.

  Args:
    statistics: what statistics_for gives config.score.method: the
      Mahalanobis precisions (the selective Mahalanobis score) or a
      classifier's training embeddings (the nearest-neighbour score).
      Otherwise the pooled reconstruction error, or a classifier's logprob.
  """
  if setup.task == registry.CLASSIFICATION:
    return _classifier_scores(
      config, features, setup, params, batch_stats, clip_lists, statistics
    )
  precision = statistics
  if precision is not None:
    return mahalanobis.score_clip_lists(
      setup.graphdef,
      params,
      batch_stats,
      features,
      clip_lists,
      precision,
      frames_per_window=config.model.frames,
      interpolate=setup.interpolate,
      batch_windows=config.score.batch_windows,
    )
  return reconstruction.score_clip_lists(
    setup.graphdef,
    params,
    batch_stats,
    features,
    clip_lists,
    frames_per_window=config.model.frames,
    interpolate=setup.interpolate,
    pooling=config.score.pooling,
    decay=config.score.gwrp_decay,
    batch_windows=config.score.batch_windows,
  )


def _classifier_outputs(config, features, setup, params, batch_stats, clips):
  """(every cached clip's class, classifier.outputs_of_clip_lists(clips))."""
  clip_labels = labels.clip_labels(
    features.clips, setup.class_names, config.data.labels
  )
  labels.check_labelled(
    features.clips,
    clip_labels,
    sorted({c for clip_list in clips for c in clip_list}),
    config.data.labels,
  )
  return clip_labels, classifier.outputs_of_clip_lists(
    setup.graphdef,
    params,
    batch_stats,
    features,
    clip_labels,
    clips,
    config.score.batch_clips,
  )


def _classifier_scores(
  config, features, setup, params, batch_stats, clip_lists, reference
):
  """A classifier's logprob, or with `reference` its nearest-neighbour score."""
  clip_labels, outputs = _classifier_outputs(
    config, features, setup, params, batch_stats, clip_lists
  )
  if reference is None:
    return [scores for scores, _ in outputs]
  return [
    neighbours.knn_scores(
      embeddings,
      clip_labels[np.asarray(clips, np.int64)],
      reference["embeddings"][m],
      reference["labels"],
    )
    for m, ((_, embeddings), clips) in enumerate(zip(outputs, clip_lists))
  ]


def score_groups(
  config,
  features,
  setup,
  params,
  batch_stats,
  clips_per_group,
  statistics=None,
):
  """[seeds, clips] scores per group, each group's seeds on its own clips.

  A model that serves several groups (a classifier) scores their clips in
  one list.
  """
  clip_lists = _clips_per_model(setup, clips_per_group)
  flat = score_models(
    config, features, setup, params, batch_stats, clip_lists, statistics
  )
  taken = [0] * len(clip_lists)
  per_group = []
  for clips, models in zip(clips_per_group, setup.models_of_group):
    per_group.append(
      np.stack([flat[m][taken[m] : taken[m] + len(clips)] for m in models])
    )
    for m in models:
      taken[m] += len(clips)
  return per_group


def mahalanobis_precision(
  config, workdir, load_data, setup, params, batch_stats
):
  """The Mahalanobis precisions of these weights, fitted once and stored.

  Stored under the weights' digest, so a resumed run, or an evaluation of
  the same weights, restores them, and other weights never find them.

  The pass follows the 2023+ baseline: each model's training clips (not its
  validation clips), in shuffled batches of config.train.batch_size windows
  (the baseline's 256 with configs/dcase2023.py), each batch centred on its
  own means, the domain "target" where the file name says so.

  Args:
    config, workdir, setup, params, batch_stats: the run and its weights.
    load_data: () -> (features, groups), called only to fit: scoring new
      recordings with stored statistics needs no dataset.

  Returns:
    [models, 2, n_mels, n_mels] float32 (mahalanobis.DOMAINS order).
  """
  path = workdir.mahalanobis_file(weights_digest(params, batch_stats))
  if path.exists():
    with np.load(path) as stored:
      return mahalanobis.MahalanobisStats(**stored).precision
  features, groups = load_data()
  clip_lists = [groups[g].train_clips for g in setup.group_of_model]
  stats = mahalanobis.fit_clip_lists(
    setup.graphdef,
    params,
    batch_stats,
    features,
    clip_lists,
    [
      [mahalanobis.clip_domain(features.clips[c].name) for c in clips]
      for clips in clip_lists
    ],
    frames_per_window=config.model.frames,
    interpolate=setup.interpolate,
    batch_size=config.train.batch_size,
    seeds=[
      [config.seed, window_data.stable_hash(name)] for name in setup.model_names
    ],
    names=list(setup.model_names),
  )
  path.parent.mkdir(exist_ok=True)
  with file_io.atomic_open(path, "wb") as f:
    np.savez(f, **stats._asdict())
  return stats.precision


def _clips_per_model(setup, clips_per_group):
  """Each model's clips: those of every group it serves, in group order."""
  clip_lists = [[] for _ in setup.model_names]
  for clips, models in zip(clips_per_group, setup.models_of_group):
    for m in models:
      clip_lists[m].extend(clips)
  return clip_lists


def neighbour_reference(config, workdir, load_data, setup, params, batch_stats):
  """A classifier's training embeddings, computed once and stored.

  Stored under the weights' digest, as the Mahalanobis statistics are. The
  reference is each model's training clips, not its held-out ones, which
  the threshold is fitted on.

  Returns:
    {"embeddings": [models, clips, d] float32, "labels": [clips] int32}
  """
  path = workdir.neighbours_file(weights_digest(params, batch_stats))
  if path.exists():
    with np.load(path) as stored:
      return dict(stored)
  features, groups = load_data()
  clips = np.sort(np.concatenate([g.train_clips for g in groups]))
  clip_labels, outputs = _classifier_outputs(
    config,
    features,
    setup,
    params,
    batch_stats,
    [clips] * len(setup.model_names),
  )
  reference = {
    "embeddings": np.stack([embeddings for _, embeddings in outputs]),
    "labels": clip_labels[clips],
  }
  path.parent.mkdir(exist_ok=True)
  with file_io.atomic_open(path, "wb") as f:
    np.savez(f, **reference)
  return reference


def statistics_for(config, workdir, load_data, setup, params, batch_stats):
  """What config.score.method scores with besides the weights, or None.

  The Mahalanobis precisions, or a classifier's training embeddings (knn);
  stored in the workdir, fitted the first time.
  """
  fit = {"mahalanobis": mahalanobis_precision, "knn": neighbour_reference}
  if config.score.method not in fit:
    return None
  return fit[config.score.method](
    config, workdir, load_data, setup, params, batch_stats
  )


def dev_test_clips(features, group):
  return [c for c in group.test_clips if features.clips[c].subset == "dev"]


def dev_auc_per_model(config, features, groups, setup, state):
  """[models] dev test score of the current weights: AE-ASD's selection.

  The year's headline figure (result_tables.headline): the mean AUC over
  ids in 2020, the official score from 2021; with select_by="dev_auc_pauc"
  STgram-MFN's criterion, the mean AUC plus the mean pAUC. It peeks at
  labelled test data.
  A model without dev test clips (an eval-only type, from 2023) gets nan:
  nothing to select by.
  """
  clip_lists = _clips_per_model(
    setup, [dev_test_clips(features, g) for g in groups]
  )
  scores = score_models(
    config, features, setup, state.params, state.batch_stats, clip_lists
  )
  year = config.data.dcase_year

  def criterion(table):
    if config.train.select_by == "dev_auc_pauc":
      overall = result_tables.type_means(year, table)[1]
      return overall["auc"] + overall["pauc"]
    return result_tables.headline(year, table)

  return np.asarray(
    [
      criterion(
        result_tables.metric_table(
          year,
          result_tables.scored_clips(
            features, [clips], [s], result_tables.own_truth, [None]
          ),
          warn=False,
        )
      )
      if len(clips)
      else np.nan
      for clips, s in zip(clip_lists, scores)
    ]
  )


def fit_threshold(scores, percentile):
  """The `percentile` point of a gamma distribution fitted to normal scores.

  As the DCASE 2021+ baselines do; with fewer than 3 scores the fit is
  meaningless, so the largest score is used instead.
  """
  # Imported here, as scipy.signal is in audio.py and synth/: scipy's
  # import costs ~0.65 s, which every start would otherwise pay.
  import scipy.stats  # pylint: disable=g-import-not-at-top

  scores = np.asarray(scores, np.float64)
  if len(scores) < 3 or np.ptp(scores) == 0:
    return float(np.max(scores))
  shape, loc, scale = scipy.stats.gamma.fit(scores)
  threshold = scipy.stats.gamma.ppf(percentile / 100, shape, loc, scale)
  if not np.isfinite(threshold):
    shape, loc, scale = scipy.stats.gamma.fit(scores, floc=0)
    threshold = scipy.stats.gamma.ppf(percentile / 100, shape, loc, scale)
  # A fit that fails both ways would decide nothing; the largest normal
  # score is the threshold the small-sample case uses.
  return float(threshold) if np.isfinite(threshold) else float(np.max(scores))


def _threshold_clips(group):
  # Held-out normal clips score like unseen normal sound; without them the
  # training clips are used, which sets the threshold somewhat low.
  return (
    list(group.val_clips) if len(group.val_clips) else list(group.train_clips)
  )


def fit_thresholds(
  config,
  workdir,
  features,
  groups,
  setup,
  params,
  batch_stats,
  tag,
  statistics=None,
):
  """Fits and stores each group's decision threshold for weights `tag`.

  The threshold applies to the seed-ensemble score (the mean over seeds), of
  config.score.method (`statistics` as score_models takes it). For the
  Mahalanobis score the gamma is fitted to clip scores, like the MSE's; the
  baseline fits it to scores of 256-window training batches instead.

  Returns:
    {group name: threshold}
  """
  scores = score_groups(
    config,
    features,
    setup,
    params,
    batch_stats,
    [_threshold_clips(g) for g in groups],
    statistics,
  )
  thresholds = {
    g.name: fit_threshold(s.mean(0), config.score.threshold_percentile)
    for g, s in zip(groups, scores)
  }
  _store(
    workdir,
    _threshold_key(config, tag),
    _decision_fit(config, params, batch_stats),
    thresholds,
  )
  return thresholds


def stored_thresholds(config, workdir, tag, params, batch_stats):
  """Thresholds stored for these very weights with the current settings.

  A tag such as best@E names another model after a rollback (checkpoint E
  deleted and trained again), so the entry must also hold these weights'
  digest; an entry of other weights, or of an older version without a
  digest, is fitted again.
  """
  return _stored(
    workdir,
    _threshold_key(config, tag),
    _decision_fit(config, params, batch_stats),
  )


def thresholds_for(
  config, workdir, load_data, setup, params, batch_stats, tag, statistics
):
  """Each group's threshold for these weights: stored, or fitted and stored.

  Args:
    load_data: () -> (features, groups), called only when fitting.
    Others: as fit_thresholds takes them.

  Returns:
    {group name: threshold}
  """
  stored = stored_thresholds(config, workdir, tag, params, batch_stats)
  if stored is not None:
    return stored
  return fit_thresholds(
    config,
    workdir,
    *load_data(),
    setup,
    params,
    batch_stats,
    tag,
    statistics,
  )


def window_thresholds_for(
  config, workdir, load_data, setup, params, batch_stats, tag
):
  """Each group's window threshold for these weights: stored, or fitted.

  The gamma fit, at config.score.segment_percentile, of the highest window
  error (scoring/windows.py) of each of the group's held-out normal clips,
  the clips the decision threshold is fitted to.

  Args:
    load_data: () -> (features, groups), called only when fitting.
    Others: as fit_thresholds takes them.

  Returns:
    {group name: threshold}
  """
  # Window errors are reconstruction errors whatever config.score.method.
  key = f"{tag} windows"
  fit = _Fit(
    config.score.segment_percentile, "max", weights_digest(params, batch_stats)
  )
  stored = _stored(workdir, key, fit)
  if stored is not None:
    return stored
  features, groups = load_data()
  thresholds = {}
  for row, group in enumerate(groups):
    peaks = [
      windows.band_errors(
        setup, params, batch_stats, row, _clip_frames(features, c)
      )
      .mean(axis=1)
      .max()
      for c in _threshold_clips(group)
    ]
    thresholds[group.name] = fit_threshold(peaks, fit.percentile)
  _store(workdir, key, fit, thresholds)
  return thresholds


def _clip_frames(features, clip):
  start = features.offsets[clip]
  return features.frames[start : start + features.lengths[clip]]


class _Fit(NamedTuple):
  """What a stored threshold was fitted with; a mismatch fits it again."""

  percentile: float
  pooling: str
  weights: str  # weights_digest of the weights it belongs to.


def _decision_fit(config, params, batch_stats):
  return _Fit(
    config.score.threshold_percentile,
    config.score.pooling,
    weights_digest(params, batch_stats),
  )


def _stored(workdir, key, fit):
  entry = workdir.read_thresholds().get(key)
  if (
    entry
    and entry["percentile"] == fit.percentile
    and entry["pooling"] == fit.pooling
    and entry.get("weights") == fit.weights
  ):
    return entry["thresholds"]
  return None


def _store(workdir, key, fit, thresholds):
  stored = workdir.read_thresholds()
  stored[key] = {**fit._asdict(), "thresholds": thresholds}
  workdir.write_thresholds(stored)


def _threshold_key(config, tag):
  # The MSE's key is the bare tag, as before there was a choice of score.
  if config.score.method == "mse":
    return tag
  return f"{tag} {config.score.method}"


def weights_digest(params, batch_stats):
  """A digest of the weights' values, dtypes and shapes, in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get((params, batch_stats))):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:32]
