"""Scored test clips and the tables the year's evaluator makes of them.

A table is {type: {section: metrics}}, with official_score.section_metrics
giving each section's metrics under the year's rules.
"""

import logging
import typing

import numpy as np

from aeasd_jax.metrics import official_score

log = logging.getLogger(__name__)


class ScoredClip(typing.NamedTuple):
  """One test clip's score, and what the metrics need to know of it."""

  machine_type: str
  section: str  # "id_XX" (2020) or "section_XX".
  name: str
  domain: str  # "source", "target", or "" (2020).
  label: int
  score: float
  threshold: float  # Its group's decision threshold; nan when none.
  decision: bool  # score > threshold.


def own_truth(clip):
  """(label, domain) as the clip's name tells them.

  A blind eval name's are UNLABELLED and "" (2022 on) until a ground truth
  tells them.
  """
  return clip.label, clip.domain


def scored_clips(features, clip_lists, scores_per_group, truth_of, thresholds):
  """ScoredClips of every group's clips.

  Args:
    features: the feature cache, whose clips the indices name.
    clip_lists: per group, the clip indices scored.
    scores_per_group: per group, one score per clip.
    truth_of: clip -> (label, domain): the clip's own for dev clips, a
      ground truth's for blind eval clips.
    thresholds: per group, the decision threshold (None: no decisions,
      every decision False).
  """
  rows = []
  for clips, scores, threshold in zip(clip_lists, scores_per_group, thresholds):
    for c, s in zip(clips, scores):
      clip = features.clips[c]
      label, domain = truth_of(clip)
      rows.append(
        ScoredClip(
          clip.machine_type,
          clip.section,
          clip.name,
          domain,
          label,
          float(s),
          np.nan if threshold is None else float(threshold),
          threshold is not None and bool(s > threshold),
        )
      )
  return rows


def by_section(rows):
  """{(type, section): [ScoredClip]}, sorted by type and section."""
  units = {}
  for row in sorted(rows, key=lambda r: (r.machine_type, r.section)):
    units.setdefault((row.machine_type, row.section), []).append(row)
  return units


def metric_table(year, rows, *, warn=True):
  """{type: {section: metrics}} of scored clips, by the year's rules.

  2020: a section (id) whose clips are all of one label has no AUC; it
  gets nan, named in a warning when `warn`, and the averages leave it out,
  so the other ids' results are still written. From 2021 such a section is
  an error: the official score needs every value.
  """
  table = {}
  for (machine_type, section), unit in by_section(rows).items():
    labels = np.array([r.label for r in unit])
    scores = np.array([r.score for r in unit])
    name = f"{machine_type}/{section}"
    if year == 2020:
      metrics = _metrics_2020(name, labels, scores, warn)
    else:
      metrics = official_score.section_metrics(
        year,
        labels,
        scores,
        np.array([r.domain for r in unit]),
        np.array([r.decision for r in unit], np.int64),
        name=name,
      )
    table.setdefault(machine_type, {})[section] = metrics
  return table


def _metrics_2020(name, labels, scores, warn):
  if len(set(labels.tolist())) < 2:
    if warn:
      log.warning(
        "%s: every test clip has label %d, so its AUC and pAUC are"
        " undefined (written as nan and left out of the"
        " averages); expected normal and anomalous clips",
        name,
        labels[0],
      )
    return {"auc": np.nan, "pauc": np.nan}
  return official_score.section_metrics(2020, labels, scores, name=name)


# What each year's summary shows per type: (metric key, column title).
_SUMMARY_COLUMNS = {
  2020: (("auc", "AUC"), ("pauc", "pAUC")),
  2021: (
    ("auc_source", "AUC(src)"),
    ("auc_target", "AUC(tgt)"),
    ("pauc_source", "pAUC(src)"),
    ("pauc_target", "pAUC(tgt)"),
  ),
}
_SECTION_COLUMNS = (
  ("auc_source", "AUC(src)"),
  ("auc_target", "AUC(tgt)"),
  ("pauc", "pAUC"),
)


def summary_columns(year):
  return _SUMMARY_COLUMNS.get(year, _SECTION_COLUMNS)


def type_means(year, table):
  """({type: {key: mean over sections}}, {key: mean over types}).

  nan values (2020's undefined ids) are left out of the means.
  """
  per_type, overall = official_score.type_averages(table)
  keys = [key for key, _ in summary_columns(year)]
  return (
    {t: {k: means[k] for k in keys} for t, means in per_type.items()},
    {k: overall[k] for k in keys},
  )


def headline(year, table):
  """The one number a run is judged by.

  2020: the mean AUC over types, as the baseline's README reports it; from
  2021 the official score.
  """
  if year == 2020:
    return type_means(year, table)[1]["auc"]
  return official_score.official_score(year, table)


def headline_name(year):
  return "average AUC" if year == 2020 else "official score"


def format_table(year, table, title, ci95=None):
  """Per type, the year's summary columns in %; then the overall line.

  2020 keeps the AE-ASD README's form, AUC(%) (pAUC(%)).
  """
  per_type, overall = type_means(year, table)
  rows = [*per_type.items(), ("Average", overall)]
  if year == 2020:
    lines = [title, f"{'type':<14} AUC(%) (pAUC(%))"]
    lines += [
      f"{name:<14} {m['auc'] * 100:6.2f} ({m['pauc'] * 100:5.2f})"
      for name, m in rows
    ]
    return "\n".join(lines)
  columns = summary_columns(year)
  lines = [title, f"{'type':<14} " + " ".join(f"{c:>9}" for _, c in columns)]
  for name, means in rows:
    lines.append(
      f"{name:<14} " + " ".join(f"{means[k] * 100:9.2f}" for k, _ in columns)
    )
  score = headline(year, table) * 100
  shown = f" (ci95 ± {ci95 * 100:.2g})" if ci95 is not None else ""
  lines.append(f"official score {score:.2f}{shown}")
  return "\n".join(lines)


def seed_summary(year, seed_tables):
  """Each type's and the overall summary columns: mean ± std over seeds."""
  columns = summary_columns(year)
  per_seed = [type_means(year, t) for t in seed_tables]
  if year == 2020:
    lines = ["per-seed AUC(%) (pAUC(%)), mean ± std over seeds"]
  else:
    lines = [
      f"per seed, {'/'.join(c for _, c in columns)} in %: mean ± std over seeds"
    ]
  for name in [*per_seed[0][0], "Average"]:
    cells = []
    for key, _ in columns:
      values = 100 * np.array(
        [
          (overall if name == "Average" else per_type[name])[key]
          for per_type, overall in per_seed
        ]
      )
      cells.append((values.mean(), values.std()))
    if year == 2020:
      (auc, auc_std), (pauc, pauc_std) = cells
      lines.append(
        f"{name:<14} {auc:6.2f} ± {auc_std:.2f} ({pauc:5.2f} ± {pauc_std:.2f})"
      )
    else:
      lines.append(
        f"{name:<14} " + "  ".join(f"{m:6.2f} ± {s:.2f}" for m, s in cells)
      )
  if year != 2020:
    scores = np.array([headline(year, t) for t in seed_tables]) * 100
    lines.append(f"official score {scores.mean():.2f} ± {scores.std():.2f}")
  return "\n".join(lines)
