"""Evaluation of a trained workdir: dev/eval tables, decisions, new recordings.

`evaluate()` is what evaluate.py runs; `score_recordings()` scores any files
with the trained models, as a plant engineer would use them.
"""

import functools
import logging
import pathlib
import re

import jax
import numpy as np

from aeasd_jax import audio
from aeasd_jax import cache
from aeasd_jax import checkpoint
from aeasd_jax import dataset
from aeasd_jax import dcase
from aeasd_jax import features as features_lib
from aeasd_jax import metric_log
from aeasd_jax import metrics
from aeasd_jax import results
from aeasd_jax import scoring
from aeasd_jax import train
from aeasd_jax import workdir_files
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown

log = logging.getLogger(__name__)

PAUC_MAX_FPR = 0.1  # The DCASE 2020 pAUC.


def score_models(config, features, setup, params, batch_stats, clip_lists):
  """Per-model scores of per-model clip lists, in one set of device calls."""
  return scoring.score_clip_lists(
      setup.graphdef, params, batch_stats, features, clip_lists,
      frames_per_window=config.model.frames, interpolate=setup.interpolate,
      pooling=config.score.pooling, decay=config.score.gwrp_decay,
      batch_windows=config.score.batch_windows)


def score_groups(config, features, setup, params, batch_stats,
                 clips_per_group):
  """[seeds, clips] scores per group, each group's seeds on its own clips."""
  clip_lists = [clips_per_group[g] for g in setup.group_of_model]
  flat = score_models(config, features, setup, params, batch_stats,
                      clip_lists)
  seeds = config.train.num_seeds
  return [np.stack(flat[g * seeds:(g + 1) * seeds])
          for g in range(len(clips_per_group))]


def dev_test_clips(features, group):
  return [c for c in group.test_clips if features.clips[c].section == "dev"]


def _auc_table(features, clip_lists, scores_per_group, labels_of,
               warn=True):
  """{type: {id: (auc, pauc)}} for one score per clip.

  With warn, an id whose AUC is undefined is named in a warning.
  """
  by_type_id = {}
  for clips, scores in zip(clip_lists, scores_per_group):
    for c, s in zip(clips, scores):
      clip = features.clips[c]
      by_type_id.setdefault(clip.machine_type, {}).setdefault(
          clip.machine_id, []).append((labels_of(clip), s))
  table = {}
  for machine_type in sorted(by_type_id):
    table[machine_type] = {}
    for machine_id in sorted(by_type_id[machine_type]):
      labels, scores = np.asarray(by_type_id[machine_type][machine_id]).T
      table[machine_type][machine_id] = _auc_pauc(
          f"{machine_type}/{machine_id}", labels, scores, warn)
  return table


def _auc_pauc(name, labels, scores, warn):
  """(AUC, pAUC) of one id; (nan, nan) with a warning when undefined.

  An id whose test clips are all normal (or all anomalous) has no AUC; the
  other ids' results are still worth writing.
  """
  if len(set(labels.tolist())) < 2:
    if warn:
      log.warning("%s: every test clip has label %d, so its AUC and pAUC are"
                  " undefined (written as nan and left out of the"
                  " averages); expected normal and anomalous clips", name,
                  labels[0])
    return (np.nan, np.nan)
  return (metrics.roc_auc_score(labels, scores),
          metrics.roc_auc_score(labels, scores, max_fpr=PAUC_MAX_FPR))


def _mean_auc(table):
  return results.averages(table)[1][0]


def dev_auc_per_model(config, features, groups, setup, state):
  """[models] dev test AUC of the current weights, averaged over ids.

  This is AE-ASD's model selection; it peeks at labelled test data.
  """
  clip_lists = [dev_test_clips(features, groups[g])
                for g in setup.group_of_model]
  scores = score_models(config, features, setup, state["params"],
                        state["batch_stats"], clip_lists)
  return np.asarray([
      _mean_auc(_auc_table(features, [clips], [s], lambda clip: clip.label,
                           warn=False))
      for clips, s in zip(clip_lists, scores)])


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
  return list(group.val_clips) if len(group.val_clips) else list(
      group.train_clips)


def fit_thresholds(config, workdir, features, groups, setup, params,
                   batch_stats, tag):
  """Fits and stores each group's decision threshold for weights `tag`.

  The threshold applies to the seed-ensemble score (the mean over seeds).

  Returns:
    {group name: threshold}
  """
  scores = score_groups(config, features, setup, params, batch_stats,
                        [_threshold_clips(g) for g in groups])
  thresholds = {g.name: fit_threshold(s.mean(0),
                                      config.score.threshold_percentile)
                for g, s in zip(groups, scores)}
  stored = workdir_files.read_thresholds(workdir)
  stored[tag] = {"percentile": config.score.threshold_percentile,
                 "pooling": config.score.pooling, "thresholds": thresholds}
  workdir_files.write_json(
      pathlib.Path(workdir) / workdir_files.THRESHOLDS_FILE, stored, indent=2,
      sort_keys=True)
  return thresholds


def stored_thresholds(config, workdir, tag):
  """Thresholds stored for weights `tag` with the current score settings."""
  entry = workdir_files.read_thresholds(workdir).get(tag)
  if (entry and entry["percentile"] == config.score.threshold_percentile and
      entry["pooling"] == config.score.pooling):
    return entry["thresholds"]
  return None


def load_weights(config, workdir, group_names, which):
  """Restores the weights a --checkpoint value names.

  Args:
    config: the workdir's config.
    workdir: the run's folder.
    group_names: the groups the run trained, in order.
    which: "best" (the best weights kept in the latest checkpoint),
      "latest", or an epoch number.

  Returns:
    (setup, params, batch_stats, tag) where tag names the weights.
  """
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  setup = train.make_setup(config, group_names, mesh)
  keys = train.model_keys(config.seed, group_names, config.train.num_seeds)
  abstract = train.abstract_with_sharding(
      jax.eval_shape(functools.partial(train.init_state, setup), keys),
      jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  if which in ("best", "latest"):
    step = mngr.latest_step()
    if step is None:
      raise AeasdError(f"{mngr.directory}: no checkpoint; expected a workdir"
                       " trained by train.py")
  else:
    try:
      step = int(which)
    except ValueError:
      raise AeasdError(f"--checkpoint={which}: expected best, latest or an"
                       " epoch number") from None
  state = checkpoint.restore(mngr, abstract, step)
  mngr.close()
  weights = _best_or_latest(state, setup) if which == "best" else state
  return setup, weights["params"], weights["batch_stats"], f"{which}@{step}"


def _best_or_latest(state, setup):
  """The best weights, but never a model's untrained initialisation.

  train.keep_best keeps the latest weights as "best" until a model has a
  selection metric; a checkpoint written before it did so may still hold
  the initialisation (best epoch 0), which is replaced here.
  """
  best = state["best"]
  untrained = np.asarray(best["epoch"]) == 0
  unselected = ~np.isfinite(np.asarray(best["metric"]))
  if unselected.any():
    log.warning(
        "no model selection happened for %s (no validation clips, or no dev"
        " AUC check); using their latest weights as 'best'",
        ", ".join(np.asarray(setup.model_names)[unselected]))
  if not untrained.any():
    return best
  return {k: train.per_model_where(untrained, state[k], best[k])
          for k in ("params", "batch_stats")}


def _decision_report(features, groups, clip_lists, ensemble, thresholds):
  """Per type and id: precision, recall and F1 of score > threshold."""
  report = {}
  for group, clips, scores in zip(groups, clip_lists, ensemble):
    decisions = scores > thresholds[group.name]
    for c, d in zip(clips, decisions):
      clip = features.clips[c]
      entry = report.setdefault((clip.machine_type, clip.machine_id),
                                {"tp": 0, "fp": 0, "fn": 0, "n": 0})
      entry["n"] += 1
      entry["tp"] += int(d and clip.label == 1)
      entry["fp"] += int(d and clip.label == 0)
      entry["fn"] += int(not d and clip.label == 1)
  for entry in report.values():
    entry.update(_precision_recall_f1(entry["tp"], entry["fp"], entry["fn"]))
  return report


def _precision_recall_f1(tp, fp, fn):
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = (2 * precision * recall / (precision + recall)
        if precision + recall else 0.0)
  return {"precision": precision, "recall": recall, "f1": f1}


def _write_score_files(folder, features, groups, clip_lists, ensemble,
                       decisions_of=None):
  """One score CSV (and decision CSV) per type and id."""
  by_file = {}
  for group, clips, scores in zip(groups, clip_lists, ensemble):
    for c, s in zip(clips, scores):
      clip = features.clips[c]
      names, values, decided = by_file.setdefault(
          (clip.machine_type, clip.machine_id), ([], [], []))
      names.append(clip.name)
      values.append(s)
      if decisions_of:
        decided.append(s > decisions_of[group.name])
  for (machine_type, machine_id), (names, values, decided) in by_file.items():
    results.write_scores(
        folder / results.score_csv_name(machine_type, machine_id), names,
        values)
    if decisions_of:
      results.write_decisions(
          folder / f"decision_result_{machine_type}_{machine_id}.csv", names,
          decided)


def evaluate(workdir, *, which="best", eval_ground_truth=None, plots=False):
  """Scores the dev (and eval) test sets and writes the DCASE result files.

  Returns:
    {"dev": table, "eval": table or None, "seeds": per-seed tables,
     "decisions": report} where a table is {type: {id: (auc, pauc)}}.
  """
  timer = metric_log.PhaseTimer()
  workdir = pathlib.Path(workdir)
  config = workdir_files.load_config(workdir)
  with timer.phase("features"):
    features, groups = dataset.load(config)
  saved_names = workdir_files.read_groups(workdir)
  if [g.name for g in groups] != saved_names:
    raise AeasdError(
        f"workdir {workdir} was trained on groups {saved_names}, but its data"
        f" now gives {[g.name for g in groups]}; expected the same dataset")
  with timer.phase("restore"):
    setup, params, batch_stats, tag = load_weights(config, workdir,
                                                   saved_names, which)
  out = workdir / "results"
  out.mkdir(exist_ok=True)
  report = {}
  with timer.phase("score"):
    dev_clips = [dev_test_clips(features, g) for g in groups]
    dev_scores = score_groups(config, features, setup, params, batch_stats,
                              dev_clips)
    thresholds = stored_thresholds(config, workdir, tag) or fit_thresholds(
        config, workdir, features, groups, setup, params, batch_stats, tag)
  ensemble = [s.mean(0) for s in dev_scores]
  _write_score_files(out, features, groups, dev_clips, ensemble, thresholds)
  label = lambda clip: clip.label
  report["dev"] = _auc_table(features, dev_clips, ensemble, label)
  report["seeds"] = [
      _auc_table(features, dev_clips, [s[k] for s in dev_scores], label,
                 warn=False)
      for k in range(config.train.num_seeds)]
  report["decisions"] = _decision_report(features, groups, dev_clips,
                                         ensemble, thresholds)
  results.write_result_csv(out / "result.csv", report["dev"])
  _write_decision_summary(out / "decisions.csv", report["decisions"])
  print(results.format_table(report["dev"], f"dev set ({tag}, "
                             f"{config.model.name})"))
  if config.train.num_seeds > 1:
    print(_seed_summary(report["seeds"]))
  print(_decision_summary(report["decisions"],
                          config.score.threshold_percentile))
  with timer.phase("score"):
    report["eval"] = _evaluate_eval_set(config, features, groups, setup,
                                        params, batch_stats, out,
                                        eval_ground_truth)
  if plots:
    from aeasd_jax import plots as plots_lib  # pylint: disable=g-import-not-at-top
    plots_lib.write(out, features, groups, dev_clips, ensemble)
  log.info("time: %s", timer.summary())
  metric_log.MetricWriter(workdir).write(
      {"evaluate": tag, "timing_s": timer.totals()})
  return report


def _evaluate_eval_set(config, features, groups, setup, params, batch_stats,
                       out, ground_truth_path):
  """Writes eval score CSVs; with a ground truth list, the eval table too."""
  eval_of = lambda g: [c for c in g.test_clips
                       if features.clips[c].section == "eval"]
  eval_clips = [eval_of(g) for g in groups]
  if not any(eval_clips):
    if ground_truth_path:
      raise AeasdError(f"--eval_ground_truth={ground_truth_path} given, but"
                       " the dataset has no eval_data/<type>/test clips")
    return None
  scores = score_groups(config, features, setup, params, batch_stats,
                        eval_clips)
  ensemble = [s.mean(0) for s in scores]
  eval_out = out / "eval"
  eval_out.mkdir(exist_ok=True)
  _write_score_files(eval_out, features, groups, eval_clips, ensemble)
  if not ground_truth_path:
    return None
  truth = results.read_ground_truth(ground_truth_path)

  def label_of(clip):
    try:
      return truth[clip.machine_type][clip.name]
    except KeyError:
      raise AeasdError(f"{ground_truth_path}: no label for {clip.machine_type}"
                       f"/{clip.name}; expected one row per eval test"
                       " file") from None

  table = _auc_table(features, eval_clips, ensemble, label_of)
  results.write_result_csv(eval_out / "result.csv", table)
  print(results.format_table(table, "eval set"))
  return table


def _write_decision_summary(path, report):
  results.write_csv(path, [
      ("type", "id", "files", "precision", "recall", "F1"),
      *((machine_type, machine_id, e["n"], f"{e['precision']:.4f}",
         f"{e['recall']:.4f}", f"{e['f1']:.4f}")
        for (machine_type, machine_id), e in sorted(report.items()))])


def _decision_summary(report, percentile):
  """Precision, recall and F1 per type, over all its ids' files."""
  lines = [f"decisions at the gamma fit's {percentile:g}th percentile:"
           " precision recall F1"]
  for machine_type in sorted({t for t, _ in report}):
    entries = [e for (t, _), e in report.items() if t == machine_type]
    scores = _precision_recall_f1(
        *(sum(e[k] for e in entries) for k in ("tp", "fp", "fn")))
    lines.append(f"{machine_type:<14} {scores['precision']:6.3f}"
                 f" {scores['recall']:6.3f} {scores['f1']:6.3f}")
  return "\n".join(lines)


def _seed_summary(seed_tables):
  """Each type's and the overall AUC and pAUC: mean ± std over the seeds."""
  lines = ["per-seed AUC(%) (pAUC(%)), mean ± std over seeds"]
  per_seed = [results.averages(t) for t in seed_tables]
  rows = [(machine_type, [p[0][machine_type] for p in per_seed])
          for machine_type in seed_tables[0]]
  for name, values in [*rows, ("Average", [p[1] for p in per_seed])]:
    values = np.array(values) * 100
    mean, std = values.mean(0), values.std(0)
    lines.append(f"{name:<14} {mean[0]:6.2f} ± {std[0]:.2f}"
                 f" ({mean[1]:5.2f} ± {std[1]:.2f})")
  return "\n".join(lines)


def _recording_paths(path):
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if path.is_dir():
    found = dcase.audio_files(path, recursive=True)
    if found:
      return found
    raise AeasdError(f"--wav={path}: no .wav or .flac files in the folder")
  raise AeasdError(f"--wav={path}: no such file or folder")


def _group_of_recording(path, machine_type, group_names):
  if machine_type in group_names:
    return machine_type
  match = re.search(r"id_\d+", path.name)
  name = f"{machine_type}/{match.group(0)}" if match else None
  if name not in group_names:
    raise AeasdError(
        f"{path}: this run has one model per machine type and id, and the"
        f" file name gives no trained id of {machine_type}; expected a name"
        " containing one of"
        f" {[g.split('/')[1] for g in group_names if g.startswith(machine_type + '/')]}")
  return name


def score_recordings(workdir, path, *, machine_type=None, which="best"):
  """Scores any recordings with a trained run and decides normal or anomaly.

  Args:
    workdir: the run's folder.
    path: a file or a folder of .wav/.flac files.
    machine_type: which type's model scores them; optional when the run
      trained one type.
    which: the --checkpoint value.

  Returns:
    One dict per file: path, and score, threshold and anomaly, or error.
  """
  workdir = pathlib.Path(workdir)
  config = workdir_files.load_config(workdir)
  group_names = workdir_files.read_groups(workdir)
  types = sorted({g.split("/")[0] for g in group_names})
  if machine_type is None and len(types) == 1:
    machine_type = types[0]
  if machine_type not in types:
    raise AeasdError(f"--machine_type={machine_type}: expected one of the"
                     f" types this run trained: {types}")
  setup, params, batch_stats, tag = load_weights(config, workdir, group_names,
                                                 which)
  thresholds = stored_thresholds(config, workdir, tag)
  if thresholds is None:
    features, groups = dataset.load(config)
    thresholds = fit_thresholds(config, workdir, features, groups, setup,
                                params, batch_stats, tag)
  log_mel = jax.jit(lambda y: features_lib.log_mel(y, **dict(config.features)))
  rows, clips, frames = [], [], []
  for file in _recording_paths(path):
    row = {"path": str(file)}
    rows.append(row)
    try:
      group = _group_of_recording(file, machine_type, group_names)
      wave = audio.read_audio(file, sample_rate=config.features.sample_rate,
                              resample=config.data.resample,
                              min_samples=config.features.n_fft)
      mel = np.asarray(log_mel(wave))
      if len(mel) < config.model.frames:
        raise AeasdError(f"{file}: {len(mel)} frames, fewer than"
                         f" config.model.frames={config.model.frames};"
                         " expected a longer recording")
    except AeasdError as e:
      row["error"] = str(e)
      continue
    row["group"] = group
    clips.append(len(rows) - 1)
    frames.append(mel)
  if clips:
    lengths = np.asarray([len(f) for f in frames], np.int64)
    recordings = cache.FeatureCache(
        directory=None, frames=np.concatenate(frames), clips=tuple(clips),
        offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths, bad_files=())
    members = [[i for i, c in enumerate(clips) if rows[c]["group"] == g]
               for g in group_names]
    scores = score_groups(config, recordings, setup, params, batch_stats,
                          members)
    for name, indices, per_seed in zip(group_names, members, scores):
      for i, score in zip(indices, per_seed.mean(0)):
        row = rows[clips[i]]
        row.update(score=float(score), threshold=thresholds[name],
                   anomaly=bool(score > thresholds[name]))
  # Tab-separated fields; a name holding a tab or newline is printed
  # escaped, so it cannot forge a field or a line.
  for row in rows:
    if "error" in row:
      print(f"{shown(row['path'])}\tERROR\t{shown(row['error'])}")
    else:
      verdict = "ANOMALY" if row["anomaly"] else "normal"
      print(f"{shown(row['path'])}\t{row['score']:.6g}\t(threshold"
            f" {row['threshold']:.6g})\t{verdict}")
  if not clips:
    raise AeasdError(f"--wav={shown(path)}: none of the {len(rows)} file(s)"
                     " could be scored (each one's error is printed above);"
                     " expected readable recordings")
  return rows
