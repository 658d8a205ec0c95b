"""Scores of every group's models and what they give: AUC tables, thresholds.

Training (dev AUC selection, thresholds) and evaluation both score groups
through here, so this module imports neither.
"""

import hashlib
import logging
import pathlib

import jax
import numpy as np

from aeasd_jax import metrics
from aeasd_jax import results
from aeasd_jax import scoring
from aeasd_jax import workdir_files

log = logging.getLogger(__name__)

PAUC_MAX_FPR = 0.1  # The DCASE 2020 pAUC.


def score_models(config, features, setup, params, batch_stats, clip_lists):
  """Per-model scores of per-model clip lists, in one set of device calls."""
  return scoring.score_clip_lists(
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


def score_groups(config, features, setup, params, batch_stats, clips_per_group):
  """[seeds, clips] scores per group, each group's seeds on its own clips."""
  clip_lists = [clips_per_group[g] for g in setup.group_of_model]
  flat = score_models(config, features, setup, params, batch_stats, clip_lists)
  seeds = config.train.num_seeds
  return [
    np.stack(flat[g * seeds : (g + 1) * seeds])
    for g in range(len(clips_per_group))
  ]


def dev_test_clips(features, group):
  return [c for c in group.test_clips if features.clips[c].section == "dev"]


def auc_table(features, clip_lists, scores_per_group, labels_of, warn=True):
  """{type: {id: (auc, pauc)}} for one score per clip.

  With warn, an id whose AUC is undefined is named in a warning.
  """
  by_type_id = {}
  for clips, scores in zip(clip_lists, scores_per_group):
    for c, s in zip(clips, scores):
      clip = features.clips[c]
      by_type_id.setdefault(clip.machine_type, {}).setdefault(
        clip.machine_id, []
      ).append((labels_of(clip), s))
  table = {}
  for machine_type in sorted(by_type_id):
    table[machine_type] = {}
    for machine_id in sorted(by_type_id[machine_type]):
      labels, scores = np.asarray(by_type_id[machine_type][machine_id]).T
      table[machine_type][machine_id] = _auc_pauc(
        f"{machine_type}/{machine_id}", labels, scores, warn
      )
  return table


def _auc_pauc(name, labels, scores, warn):
  """(AUC, pAUC) of one id; (nan, nan) with a warning when undefined.

  An id whose test clips are all normal (or all anomalous) has no AUC; the
  other ids' results are still worth writing.
  """
  if len(set(labels.tolist())) < 2:
    if warn:
      log.warning(
        "%s: every test clip has label %d, so its AUC and pAUC are"
        " undefined (written as nan and left out of the"
        " averages); expected normal and anomalous clips",
        name,
        labels[0],
      )
    return (np.nan, np.nan)
  return (
    metrics.roc_auc_score(labels, scores),
    metrics.roc_auc_score(labels, scores, max_fpr=PAUC_MAX_FPR),
  )


def mean_auc(table):
  return results.averages(table)[1][0]


def dev_auc_per_model(config, features, groups, setup, state):
  """[models] dev test AUC of the current weights, averaged over ids.

  This is AE-ASD's model selection; it peeks at labelled test data.
  """
  clip_lists = [
    dev_test_clips(features, groups[g]) for g in setup.group_of_model
  ]
  scores = score_models(
    config, features, setup, state.params, state.batch_stats, clip_lists
  )
  return np.asarray(
    [
      mean_auc(
        auc_table(features, [clips], [s], lambda clip: clip.label, warn=False)
      )
      for clips, s in zip(clip_lists, scores)
    ]
  )


def fit_threshold(scores, percentile):
  """The `percentile` point of a gamma distribution fitted to normal scores.

  As the DCASE 2021+ baselines do; with fewer than 3 scores the fit is
  meaningless, so the largest score is used instead.
  """
  # Imported here, as scipy.signal is in audio.py and synth.py: scipy's
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
  config, workdir, features, groups, setup, params, batch_stats, tag
):
  """Fits and stores each group's decision threshold for weights `tag`.

  The threshold applies to the seed-ensemble score (the mean over seeds).

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
  )
  thresholds = {
    g.name: fit_threshold(s.mean(0), config.score.threshold_percentile)
    for g, s in zip(groups, scores)
  }
  stored = workdir_files.read_thresholds(workdir)
  stored[tag] = {
    "percentile": config.score.threshold_percentile,
    "pooling": config.score.pooling,
    "weights": weights_digest(params, batch_stats),
    "thresholds": thresholds,
  }
  workdir_files.write_json(
    pathlib.Path(workdir) / workdir_files.THRESHOLDS_FILE,
    stored,
    indent=2,
    sort_keys=True,
  )
  return thresholds


def stored_thresholds(config, workdir, tag, params, batch_stats):
  """Thresholds stored for these very weights with the current settings.

  A tag such as best@E names another model after a rollback (checkpoint E
  deleted and trained again), so the entry must also hold these weights'
  digest; an entry of other weights, or of an older version without a
  digest, is fitted again.
  """
  entry = workdir_files.read_thresholds(workdir).get(tag)
  if (
    entry
    and entry["percentile"] == config.score.threshold_percentile
    and entry["pooling"] == config.score.pooling
    and entry.get("weights") == weights_digest(params, batch_stats)
  ):
    return entry["thresholds"]
  return None


def weights_digest(params, batch_stats):
  """A digest of the weights' values, dtypes and shapes, in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get((params, batch_stats))):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:32]
