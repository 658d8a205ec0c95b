"""Evaluation of a trained workdir: dev/eval tables, decisions, result files.

`evaluate()` is what evaluate.py runs; recordings.py scores new recordings.
"""

import logging
import pathlib

import numpy as np

from aeasd_jax import dataset
from aeasd_jax import group_scoring
from aeasd_jax import metric_log
from aeasd_jax import results
from aeasd_jax import run_identity
from aeasd_jax import workdir_files
from aeasd_jax import workdir_weights
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)


def _decision_report(features, groups, clip_lists, ensemble, thresholds):
  """Per type and id: precision, recall and F1 of score > threshold."""
  report = {}
  for group, clips, scores in zip(groups, clip_lists, ensemble):
    decisions = scores > thresholds[group.name]
    for c, d in zip(clips, decisions):
      clip = features.clips[c]
      entry = report.setdefault(
        (clip.machine_type, clip.machine_id),
        {"tp": 0, "fp": 0, "fn": 0, "n": 0},
      )
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
  f1 = (
    2 * precision * recall / (precision + recall) if precision + recall else 0.0
  )
  return {"precision": precision, "recall": recall, "f1": f1}


def _write_score_files(
  folder, features, groups, clip_lists, ensemble, decisions_of=None
):
  """One score CSV (and decision CSV) per type and id."""
  by_file = {}
  for group, clips, scores in zip(groups, clip_lists, ensemble):
    for c, s in zip(clips, scores):
      clip = features.clips[c]
      names, values, decided = by_file.setdefault(
        (clip.machine_type, clip.machine_id), ([], [], [])
      )
      names.append(clip.name)
      values.append(s)
      if decisions_of:
        decided.append(s > decisions_of[group.name])
  for (machine_type, machine_id), (names, values, decided) in by_file.items():
    results.write_scores(
      folder / results.score_csv_name(machine_type, machine_id), names, values
    )
    if decisions_of:
      results.write_decisions(
        folder / f"decision_result_{machine_type}_{machine_id}.csv",
        names,
        decided,
      )


def load_data(workdir, config, data_root=None):
  """The dataset a workdir's run trained on, loaded for evaluate.py.

  Args:
    workdir: the run's folder.
    config: its config (run_identity.load_config).
    data_root: the --data_root flag: where the data lies now, in place of
      config.data.root; config.json is not changed.

  Returns:
    (cache.FeatureCache, list of dataset.Group)

  Raises:
    AeasdError: the data is not where the flag or config.json says, or it is
      not the data the run trained on.
  """
  config_path = pathlib.Path(workdir) / workdir_files.CONFIG_FILE
  if data_root is not None:
    if not data_root or not pathlib.Path(data_root).expanduser().is_dir():
      raise AeasdError(
        f"--data_root={data_root}: no such folder; expected the folder"
        " holding the run's dataset (<root>/dev_data/<type>/...)"
      )
    config = config.copy_and_resolve_references()
    config.data.root = data_root
  elif config.data.root and not (
    pathlib.Path(config.data.root).expanduser().is_dir()
  ):
    raise AeasdError(
      f"{config_path}: data.root={config.data.root}: no such folder (moved,"
      " or this workdir was copied from another machine); use"
      " --data_root=PATH to point evaluate.py at the data's new location"
    )
  try:
    features, groups = dataset.load(config)
  except AeasdError as e:
    if "config." not in str(e):
      raise
    # The advice names config settings, which evaluate.py reads from the
    # workdir rather than from flags. A listing keeps its lines; a one-line
    # message stays one line.
    note = (
      "(evaluate.py reads the config.* settings named here from"
      f" {config_path}: change them there, or give data.root's new value as"
      " --data_root=PATH)"
    )
    separator = "\n" if "\n" in str(e) else "; "
    raise AeasdError(f"{e}{separator}{note}") from None
  run_identity.check_same_data(workdir, config, features, groups)
  saved_names = workdir_files.read_groups(workdir)
  if [g.name for g in groups] != saved_names:
    raise AeasdError(
      f"workdir {workdir} was trained on groups {saved_names}, but its data"
      f" now gives {[g.name for g in groups]}; expected the same dataset"
      " (--data_root=PATH points evaluate.py at where it lies now)"
    )
  return features, groups


def evaluate(
  workdir, *, which="best", eval_ground_truth=None, plots=False, data_root=None
):
  """Scores the dev (and eval) test sets and writes the DCASE result files.

  Args:
    workdir: the run's folder.
    which: the --checkpoint value.
    eval_ground_truth: an eval_data_list.csv, to score the eval set.
    plots: also write ROC and histogram PNGs.
    data_root: where the run's data lies now (see load_data).

  Returns:
    {"dev": table, "eval": table or None, "seeds": per-seed tables,
     "decisions": report} where a table is {type: {id: (auc, pauc)}}.
  """
  timer = metric_log.PhaseTimer()
  workdir = pathlib.Path(workdir)
  config = run_identity.load_config(workdir)
  with timer.phase("features"):
    features, groups = load_data(workdir, config, data_root)
  with timer.phase("restore"):
    setup, params, batch_stats, tag = workdir_weights.load_weights(
      config, workdir, [g.name for g in groups], which
    )
  out = workdir / "results"
  out.mkdir(exist_ok=True)
  report = {}
  with timer.phase("score"):
    dev_clips = [group_scoring.dev_test_clips(features, g) for g in groups]
    dev_scores = group_scoring.score_groups(
      config, features, setup, params, batch_stats, dev_clips
    )
    thresholds = group_scoring.stored_thresholds(
      config, workdir, tag, params, batch_stats
    ) or group_scoring.fit_thresholds(
      config, workdir, features, groups, setup, params, batch_stats, tag
    )
  ensemble = [s.mean(0) for s in dev_scores]
  _write_score_files(out, features, groups, dev_clips, ensemble, thresholds)
  label = lambda clip: clip.label
  report["dev"] = group_scoring.auc_table(features, dev_clips, ensemble, label)
  report["seeds"] = [
    group_scoring.auc_table(
      features, dev_clips, [s[k] for s in dev_scores], label, warn=False
    )
    for k in range(config.train.num_seeds)
  ]
  report["decisions"] = _decision_report(
    features, groups, dev_clips, ensemble, thresholds
  )
  results.write_result_csv(out / "result.csv", report["dev"])
  _write_decision_summary(out / "decisions.csv", report["decisions"])
  print(
    results.format_table(report["dev"], f"dev set ({tag}, {config.model.name})")
  )
  if config.train.num_seeds > 1:
    print(_seed_summary(report["seeds"]))
  print(
    _decision_summary(report["decisions"], config.score.threshold_percentile)
  )
  with timer.phase("score"):
    report["eval"] = _evaluate_eval_set(
      config,
      features,
      groups,
      setup,
      params,
      batch_stats,
      out,
      eval_ground_truth,
    )
  if plots:
    from aeasd_jax import plots as plots_lib  # pylint: disable=g-import-not-at-top

    plots_lib.write(out, features, groups, dev_clips, ensemble)
  log.info("time: %s", timer.summary())
  metric_log.MetricWriter(workdir).write(
    {"evaluate": tag, "timing_s": timer.totals()}
  )
  return report


def _evaluate_eval_set(
  config, features, groups, setup, params, batch_stats, out, ground_truth_path
):
  """Writes eval score CSVs; with a ground truth list, the eval table too."""
  eval_of = lambda g: [
    c for c in g.test_clips if features.clips[c].section == "eval"
  ]
  eval_clips = [eval_of(g) for g in groups]
  if not any(eval_clips):
    if ground_truth_path:
      raise AeasdError(
        f"--eval_ground_truth={ground_truth_path} given, but"
        " the dataset has no eval_data/<type>/test clips"
      )
    return None
  scores = group_scoring.score_groups(
    config, features, setup, params, batch_stats, eval_clips
  )
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
      raise AeasdError(
        f"{ground_truth_path}: no label for {clip.machine_type}"
        f"/{clip.name}; expected one row per eval test"
        " file"
      ) from None

  table = group_scoring.auc_table(features, eval_clips, ensemble, label_of)
  results.write_result_csv(eval_out / "result.csv", table)
  print(results.format_table(table, "eval set"))
  return table


def _write_decision_summary(path, report):
  results.write_csv(
    path,
    [
      ("type", "id", "files", "precision", "recall", "F1"),
      *(
        (
          machine_type,
          machine_id,
          e["n"],
          f"{e['precision']:.4f}",
          f"{e['recall']:.4f}",
          f"{e['f1']:.4f}",
        )
        for (machine_type, machine_id), e in sorted(report.items())
      ),
    ],
  )


def _decision_summary(report, percentile):
  """Precision, recall and F1 per type, over all its ids' files."""
  lines = [
    f"decisions at the gamma fit's {percentile:g}th percentile:"
    " precision recall F1"
  ]
  for machine_type in sorted({t for t, _ in report}):
    entries = [e for (t, _), e in report.items() if t == machine_type]
    scores = _precision_recall_f1(
      *(sum(e[k] for e in entries) for k in ("tp", "fp", "fn"))
    )
    lines.append(
      f"{machine_type:<14} {scores['precision']:6.3f}"
      f" {scores['recall']:6.3f} {scores['f1']:6.3f}"
    )
  return "\n".join(lines)


def _seed_summary(seed_tables):
  """Each type's and the overall AUC and pAUC: mean ± std over the seeds."""
  lines = ["per-seed AUC(%) (pAUC(%)), mean ± std over seeds"]
  per_seed = [results.averages(t) for t in seed_tables]
  rows = [
    (machine_type, [p[0][machine_type] for p in per_seed])
    for machine_type in seed_tables[0]
  ]
  for name, values in [*rows, ("Average", [p[1] for p in per_seed])]:
    values = np.array(values) * 100
    mean, std = values.mean(0), values.std(0)
    lines.append(
      f"{name:<14} {mean[0]:6.2f} ± {std[0]:.2f}"
      f" ({mean[1]:5.2f} ± {std[1]:.2f})"
    )
  return "\n".join(lines)
