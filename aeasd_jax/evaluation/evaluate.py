"""Evaluation of a trained workdir: dev/eval tables, decisions, result files.

`evaluate()` is what evaluate.py runs; recordings.py scores new recordings.
"""

import functools
import logging
import pathlib
import typing

from aeasd_jax.data import dataset
from aeasd_jax.models import registry
from aeasd_jax.scoring import group_scoring
from aeasd_jax.workdir import metric_log
from aeasd_jax.metrics import official_score
from aeasd_jax.metrics import result_tables
from aeasd_jax.evaluation import results
from aeasd_jax.training import run_identity
from aeasd_jax.workdir import file_io
from aeasd_jax.workdir import layout
from aeasd_jax.training import restore
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)


def _decision_report(rows):
  """Per type and section: precision, recall and F1 of score > threshold."""
  report = {}
  for row in rows:
    entry = report.setdefault(
      (row.machine_type, row.section), {"tp": 0, "fp": 0, "fn": 0, "n": 0}
    )
    entry["n"] += 1
    entry["tp"] += int(row.decision and row.label == 1)
    entry["fp"] += int(row.decision and row.label == 0)
    entry["fn"] += int(not row.decision and row.label == 1)
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


def _write_score_files(folder, year, rows):
  """The score and decision CSVs, one per file the year's evaluator reads."""
  by_file = {}
  for row in rows:
    key = (row.machine_type, row.section, row.domain if year == 2021 else "")
    by_file.setdefault(key, []).append(row)
  for key, file_rows in by_file.items():
    names = [r.name for r in file_rows]
    results.write_scores(
      folder / results.score_csv_name(year, *key),
      names,
      [r.score for r in file_rows],
    )
    results.write_decisions(
      folder / results.decision_csv_name(year, *key),
      names,
      [r.decision for r in file_rows],
    )


def load_data(workdir, config, data_root=None):
  """The dataset a workdir's run trained on, loaded for evaluate.py.

  Args:
    workdir: the run's layout.Workdir.
    config: its config (run_identity.load_config).
    data_root: the --data_root flag: where the data lies now, in place of
      config.data.root; config.json is not changed.

  Returns:
    (cache.FeatureCache, list of dataset.Group)

  Raises:
    AeasdError: the data is not where the flag or config.json says, or it is
      not the data the run trained on.
  """
  config_path = workdir.config_file
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
    features, groups = dataset.load(
      config, waveforms=registry.spec(config).uses_waveform
    )
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
  saved_names = workdir.read_groups()
  if [g.name for g in groups] != saved_names:
    raise AeasdError(
      f"workdir {workdir} was trained on groups {saved_names}, but its data"
      f" now gives {[g.name for g in groups]}; expected the same dataset"
      " (--data_root=PATH points evaluate.py at where it lies now)"
    )
  return features, groups


def evaluate(
  workdir,
  *,
  which="best",
  eval_ground_truth=None,
  partial_ground_truth=False,
  plots=False,
  data_root=None,
  cache_dir=None,
  score_method=None,
):
  """Scores the dev (and eval) test sets and writes the DCASE result files.

  The files replace results/<method>/ as a whole (layout.Workdir.new_results),
  with evaluation.json saying what they are of.

  Args:
    workdir: the run's folder.
    which: the --checkpoint value.
    eval_ground_truth: the eval set's ground truth (results.read_ground_truth:
      2020's eval_data_list.csv, or from 2021 the evaluator's folder).
    partial_ground_truth: score the eval set although the ground truth lists
      clips or machine types the run did not score; the score is labelled
      partial. Without it such a ground truth is an error, as the official
      evaluators refuse a submission that does not cover theirs.
    plots: also write ROC and histogram PNGs.
    data_root: where the run's data lies now (see load_data).
    cache_dir: where its feature cache lies now (run_identity.load_config).
    score_method: "mse" or "mahalanobis" in place of config.score.method.

  Returns:
    {"year", "dev": table, "eval": table or None, "eval_score": its official
     score (2021 on), "eval_partial": what a partial eval score covers, or
     None, "seeds": per-seed tables, "decisions": report, "score": the dev
     official score (2021 on), "ci95": its 95% interval (2022 on)}, where
    a table is {type: {section: metrics}} (result_tables.metric_table).
  """
  if partial_ground_truth and not eval_ground_truth:
    raise AeasdError(
      "--partial_ground_truth needs --eval_ground_truth: expected the"
      " ground truth a partial eval score is to be computed with"
    )
  timer = metric_log.PhaseTimer()
  workdir = layout.Workdir(workdir)
  config = with_score_method(
    run_identity.load_config(workdir, cache_dir), score_method
  )
  with workdir.new_results(config.score.method) as out:
    with timer.phase("features"):
      features, groups = load_data(workdir, config, data_root)
    with timer.phase("restore"):
      setup, params, batch_stats, tag = restore.load_weights(
        config, workdir, [g.name for g in groups], which
      )
    with timer.phase("score"):
      run = _scoring_run(
        config, workdir, features, groups, (setup, params, batch_stats), tag
      )
      report, rows = _evaluate_dev_set(run, out)
    _print_dev_report(config, run.year, report, tag)
    with timer.phase("score"):
      report.update(
        _evaluate_eval_set(run, out, eval_ground_truth, partial_ground_truth)
      )
    if plots:
      from aeasd_jax.evaluation import plots as plots_lib  # pylint: disable=g-import-not-at-top

      plots_lib.write(out, run.year, rows, report["dev"])
    _write_evaluation_record(
      out, tag, which, config, eval_ground_truth, report["eval_partial"]
    )
  log.info("time: %s", timer.summary())
  metric_log.MetricWriter(workdir.metrics_file).write(
    {"evaluate": tag, "timing_s": timer.totals()}
  )
  return report


def _write_evaluation_record(out, tag, which, config, ground_truth, partial):
  """evaluation.json: what the results beside it are of."""
  file_io.write_json(
    out / layout.EVALUATION_FILE,
    {
      "weights": tag,
      "checkpoint": which,
      "score_method": config.score.method,
      "eval_ground_truth": (
        str(pathlib.Path(ground_truth).absolute()) if ground_truth else None
      ),
      "eval_partial": partial is not None,
      "eval_partial_coverage": partial,
    },
    indent=2,
  )


class _ScoringRun(typing.NamedTuple):
  """What scoring a test set needs: the run, its weights and thresholds."""

  config: typing.Any
  year: int
  features: typing.Any  # cache.FeatureCache
  groups: list  # [dataset.Group]
  weights: tuple  # (setup, params, batch_stats, precision)
  thresholds: list  # per group


def _scoring_run(config, workdir, features, groups, restored, tag):
  """The _ScoringRun of restored (setup, params, batch_stats) weights."""
  precision = group_scoring.statistics_for(
    config, workdir, lambda: (features, groups), *restored
  )
  by_name = group_scoring.thresholds_for(
    config,
    workdir,
    lambda: (features, groups),
    *restored,
    tag,
    precision,
  )
  return _ScoringRun(
    config,
    dataset.dcase_year(config),
    features,
    groups,
    (*restored, precision),
    [by_name[g.name] for g in groups],
  )


def _evaluate_dev_set(run, out):
  """Scores the dev test clips and writes their result files.

  Returns:
    (report without "eval", the seed ensemble's scored rows)
  """
  config, year, features, groups, weights, thresholds = run
  setup, params, batch_stats, precision = weights
  dev_clips = [group_scoring.dev_test_clips(features, g) for g in groups]
  dev_scores = group_scoring.score_groups(
    config, features, setup, params, batch_stats, dev_clips, precision
  )
  scored = lambda scores: result_tables.scored_clips(
    features, dev_clips, scores, result_tables.own_truth, thresholds
  )
  rows = scored([s.mean(0) for s in dev_scores])
  _write_score_files(out, year, rows)
  report = {"year": year}
  report["dev"] = result_tables.metric_table(year, rows)
  report["score"], report["ci95"] = _official_score(year, report["dev"], rows)
  report["seeds"] = [
    result_tables.metric_table(
      year, scored([s[k] for s in dev_scores]), warn=False
    )
    for k in range(config.train.num_seeds)
  ]
  report["decisions"] = _decision_report(rows)
  results.write_result_csv(
    out / "result.csv", year, report["dev"], report["score"], report["ci95"]
  )
  _write_decision_summary(out / "decisions.csv", year, report["decisions"])
  return report, rows


def _print_dev_report(config, year, report, tag):
  print(
    result_tables.format_table(
      year,
      report["dev"],
      f"DCASE {year} dev set ({tag}, {config.model.name},"
      f" {config.score.method})",
      report["ci95"],
    )
  )
  if config.train.num_seeds > 1:
    print(result_tables.seed_summary(year, report["seeds"]))
  print(
    _decision_summary(report["decisions"], config.score.threshold_percentile)
  )


def with_score_method(config, score_method):
  """The workdir's config, scoring by `score_method` if one is given."""
  if score_method is None:
    return config
  scores = registry.spec(config).scores
  if score_method not in scores:
    raise AeasdError(
      f"--score={score_method}: expected {' or '.join(scores)} for"
      f" {config.model.name}"
    )
  config = config.copy_and_resolve_references()
  config.score.method = score_method
  return config


def _official_score(year, table, rows):
  """(official score, ci95) of a table; (None, None) in 2020, which has none.

  The ci95 exists from 2022, as in the evaluators.
  """
  if year == 2020:
    return None, None
  score = official_score.official_score(year, table)
  if year == 2021:
    return score, None
  return score, official_score.official_score_ci95(
    year, [r.label for r in rows], [r.score for r in rows]
  )


def _evaluate_eval_set(run, out, ground_truth_path, partial_allowed):
  """Writes eval score CSVs; with a ground truth, the eval table too.

  Returns:
    The report's {"eval", "eval_score", "eval_partial"}, each None where
    there is no ground truth.
  """
  config, year, features, groups, weights, thresholds = run
  eval_clips = [
    [c for c in g.test_clips if features.clips[c].subset == "eval"]
    for g in groups
  ]
  if not any(eval_clips) and ground_truth_path:
    raise AeasdError(
      f"--eval_ground_truth={ground_truth_path} given, but"
      " the dataset has no eval_data/<type>/test clips"
    )
  report = {"eval": None, "eval_score": None, "eval_partial": None}
  if not any(eval_clips):
    return report
  truth_of = result_tables.own_truth  # Blind: UNLABELLED.
  if ground_truth_path:
    truth = results.read_ground_truth(ground_truth_path, year)
    report["eval_partial"] = results.ground_truth_coverage(
      ground_truth_path,
      truth,
      {
        (features.clips[c].machine_type, features.clips[c].name)
        for clips in eval_clips
        for c in clips
      },
      partial_allowed,
    )
    truth_of = functools.partial(_label_of, ground_truth_path, truth)
  setup, params, batch_stats, precision = weights
  scores = group_scoring.score_groups(
    config, features, setup, params, batch_stats, eval_clips, precision
  )
  rows = result_tables.scored_clips(
    features, eval_clips, [s.mean(0) for s in scores], truth_of, thresholds
  )
  eval_out = out / "eval"
  eval_out.mkdir()
  _write_score_files(eval_out, year, rows)
  if not ground_truth_path:
    return report
  table = result_tables.metric_table(year, rows)
  score, ci95 = _official_score(year, table, rows)
  partial = report["eval_partial"]
  results.write_result_csv(
    eval_out / "result.csv", year, table, score, ci95, partial
  )
  title = f"eval set (PARTIAL: {partial})" if partial else "eval set"
  print(result_tables.format_table(year, table, title, ci95))
  report.update(eval=table, eval_score=score)
  return report


def _label_of(ground_truth_path, truth, clip):
  """(label, domain) of an eval clip in the ground truth."""
  try:
    return truth[clip.machine_type][clip.name]
  except KeyError:
    raise AeasdError(
      f"{ground_truth_path}: no label for {clip.machine_type}"
      f"/{clip.name}; expected one row per eval test file"
    ) from None


def _write_decision_summary(path, year, report):
  results.write_csv(
    path,
    [
      (
        "type",
        "id" if year == 2020 else "section",
        "files",
        "precision",
        "recall",
        "F1",
      ),
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
