"""The official DCASE Task 2 metrics of every year from 2020 to 2026.

NumPy reimplementations of the organisers' evaluators, so that a score
written here reads on the scale of the published tables.

Where each rule comes from (the evaluators all score with scikit-learn, whose
AUC `roc.roc_auc_score` matches to the last bit):
  2020  y-kawagu/dcase2020_task2_evaluator, evaluator.py
  2021  y-kawagu/dcase2021_task2_evaluator, dcase2021_task2_evaluator.py
  2022  Kota-Dohi/dcase2022_evaluator, dcase2022_task2_evaluator.py
  2023  nttcslab/dcase2023_task2_evaluator, dcase2023_task2_evaluator.py
  2024  nttcslab/dcase2024_task2_evaluator, the 2023 script with new names
  2025  nttcslab/dcase2025_task2_evaluator and
  2026  nttcslab/dcase2026_task2_evaluator: only their READMEs could be read;
        their result tables have the 2023 layout, and the published
        baseline figures reproduce to the last bit under the 2023 rules.
The baseline's own result.csv (nttcslab/dcase2023_task2_baseline_ae,
networks/dcase2023t2_ae/dcase2023t2_ae.py) adds pAUC per domain.
"""

import numbers
import sys
import warnings

import numpy as np

from aeasd_jax.data import dcase
from aeasd_jax.metrics import roc
from aeasd_jax.errors import AeasdError

MAX_FPR = 0.1
# Every evaluator clamps values at sys.float_info.epsilon before
# scipy.stats.hmean, so a zero (an AUC of 0) gives a tiny mean, not an error.
EPS = sys.float_info.epsilon
# The jackknife's confidence level; kept as the evaluators write it, since
# (1 - 0.95) / 2 is not exactly 0.025 in floating point.
CONFIDENCE = 0.95


def check_year(year):
  """The year as an int; an AeasdError naming the setting if unsupported."""
  if (
    isinstance(year, (bool, np.bool_))
    or not isinstance(year, numbers.Integral)
    or year not in dcase.YEARS
  ):
    raise AeasdError(
      f'config.data.dcase_year: expected a DCASE Task 2 year from '
      f'{dcase.YEARS[0]} to {dcase.YEARS[-1]}; got {year!r}.'
    )
  return int(year)


def section_metrics(
  year, labels, scores, domains=None, decisions=None, name='this section'
):
  """The metrics the year's evaluator reports for one (type, section).

  A section is DCASE 2020's machine id. Which clips each value is computed on
  is what differs between the years:
    2020: `auc`, `pauc` on all clips.
    2021: `auc_<d>`, `pauc_<d>` on domain d's clips only; the evaluator reads
      one score file per domain.
    2022 on: `auc` (the evaluator's "AUC (all)") and `pauc` on all clips;
      `auc_<d>` on domain d's normal clips and every anomalous clip of the
      section, whatever its domain; `pauc_<d>` on domain d's clips only, as
      the baseline's result.csv has it (the evaluators do not report it).
  From 2021, with decisions: `precision_<d>`, `recall_<d>`, `f1_<d>` on
  domain d's clips, each ratio's denominator clamped at EPS as the evaluators
  do, so an empty one gives 0.

  Args:
    year: the DCASE year, 2020 to 2026.
    labels: 1-D, 0 (normal) or 1 (anomalous) per clip.
    scores: 1-D finite anomaly scores, higher meaning more anomalous.
    domains: 'source' or 'target' per clip; None (or all '') for 2020.
    decisions: optional 1-D 0/1 per clip, 1 meaning judged anomalous.
    name: names the section in error messages, e.g. 'fan section_00'.

  Returns:
    {metric name: float}.

  Raises:
    AeasdError: on an unknown year, inputs of the wrong shape or values, a
      section without both classes or, from 2021, a domain without both.
  """
  year = check_year(year)
  labels, scores = roc.check_inputs(labels, scores, name)
  auc = lambda mask, max_fpr=None: roc.roc_auc_score(
    labels[mask], scores[mask], max_fpr
  )
  everything = np.ones(labels.size, bool)
  if year == 2020:
    if domains is not None and np.any(np.asarray(domains) != ''):
      raise AeasdError(
        f'{name}: DCASE 2020 has no domains; expected none, or "" per clip.'
      )
    if decisions is not None:
      raise AeasdError(
        f'{name}: the DCASE 2020 evaluator scores no decisions; expected'
        ' decisions=None.'
      )
    return {'auc': auc(everything), 'pauc': auc(everything, MAX_FPR)}

  masks = _domain_masks(year, name, labels, domains)
  decided = None if decisions is None else _decided(name, labels, decisions)
  out = {}
  if year > 2021:
    out['auc'] = auc(everything)
    out['pauc'] = auc(everything, MAX_FPR)
  for domain, mask in masks.items():
    # 2022 on, the task asks for one detector across domains, so a domain's
    # AUC ranks its normal clips against every anomaly of the section.
    out[f'auc_{domain}'] = auc(mask if year == 2021 else mask | labels)
    out[f'pauc_{domain}'] = auc(mask, MAX_FPR)
    if decided is not None:
      precision, recall, f1 = _detection(labels[mask], decided[mask])
      out[f'precision_{domain}'] = precision
      out[f'recall_{domain}'] = recall
      out[f'f1_{domain}'] = f1
  return out


def _domain_masks(year, name, labels, domains):
  """{domain: clip mask}, each domain holding normal and anomalous clips.

  The evaluators need normals in each domain; the baseline's pAUC per domain
  and the 2021 evaluator need anomalies too. The DCASE test sets always hold
  both, so a domain without them means the caller mislabelled clips.
  """
  if domains is None:
    raise AeasdError(
      f'{name}: DCASE {year} scores source and target domains separately;'
      ' expected a domain per clip.'
    )
  domains = np.asarray(domains)
  if domains.shape != labels.shape:
    raise AeasdError(
      f'{name}: expected one domain per clip; got shape {domains.shape} for'
      f' {labels.size} clips.'
    )
  unknown = ~np.isin(domains, dcase.DOMAINS)
  if unknown.any():
    raise AeasdError(
      f'{name}: expected domains "source" or "target"; got '
      f'{np.unique(domains[unknown])[:5].tolist()} at {int(unknown.sum())} '
      f'clip(s), first at index {int(np.argmax(unknown))}.'
    )
  masks = {}
  for domain in dcase.DOMAINS:
    mask = domains == domain
    normal = int(np.sum(mask & ~labels))
    anomalous = int(np.sum(mask & labels))
    if not normal or not anomalous:
      raise AeasdError(
        f'{name}: DCASE {year} scores each domain on its own clips; got '
        f'{normal} normal and {anomalous} anomalous {domain} clips; expected'
        ' at least one of each.'
      )
    masks[domain] = mask
  return masks


def _decided(name, labels, decisions):
  """Decisions as a bool array; 1 means the clip was judged anomalous."""
  decisions = np.asarray(decisions)
  if decisions.shape != labels.shape:
    raise AeasdError(
      f'{name}: expected one decision per clip; got shape {decisions.shape}'
      f' for {labels.size} clips.'
    )
  if decisions.dtype.kind not in 'biuf' or not np.isin(decisions, (0, 1)).all():
    raise AeasdError(
      f'{name}: expected decisions 0 (normal) or 1 (anomalous); got '
      f'{np.unique(decisions)[:5].tolist()}.'
    )
  return decisions == 1


def _detection(labels, decided):
  """(precision, recall, F1) in the evaluators' own arithmetic."""
  tp = np.sum(labels & decided)
  fp = np.sum(~labels & decided)
  fn = np.sum(labels & ~decided)
  precision = tp / np.maximum(tp + fp, EPS)
  recall = tp / np.maximum(tp + fn, EPS)
  f1 = 2.0 * precision * recall / np.maximum(precision + recall, EPS)
  return float(precision), float(recall), float(f1)


def official_score(year, table):
  """The year's official score: a harmonic mean over every section.

  2021: of every section's AUC and pAUC in both domains. 2022 on: of every
  section's AUC(source), AUC(target) and pAUC. Values are clamped at EPS
  first. The order of the values follows the evaluators' (types and sections
  sorted), since it moves the last bits of the mean.

  Args:
    year: the DCASE year, 2021 to 2026.
    table: {type: {section: section_metrics(year, ...)}}.

  Raises:
    AeasdError: for 2020, whose evaluator reports no single score (see
      `type_averages`), an unknown year, or a table lacking a value.
  """
  year = check_year(year)
  if year == 2020:
    raise AeasdError(
      'The DCASE 2020 evaluator reports no single official score, only each'
      " type's arithmetic mean AUC and pAUC; expected a year from 2021."
    )
  units = [(t, s) for t in sorted(table) for s in sorted(table[t])]
  if not units:
    raise AeasdError('official_score: expected at least one section; got none.')
  if year == 2021:
    # The evaluator's rows run over types, then domains, then sections; the
    # mean takes each row's AUC and pAUC in turn.
    cells = [
      (t, s, f'{metric}_{d}')
      for t in sorted(table)
      for d in dcase.DOMAINS
      for s in sorted(table[t])
      for metric in ('auc', 'pauc')
    ]
  else:
    # Every AUC(source), then every AUC(target), then every pAUC.
    cells = [
      (t, s, key)
      for key in ('auc_source', 'auc_target', 'pauc')
      for t, s in units
    ]
  values = [_value(year, table, *cell) for cell in cells]
  return float(harmonic_mean(values))


def _value(year, table, machine_type, section, key):
  value = table[machine_type][section].get(key)
  if not isinstance(value, numbers.Real) or not np.isfinite(value):
    raise AeasdError(
      f'official_score: {machine_type} {section} has {key}={value!r};'
      f' expected a finite value from section_metrics({year}, ...).'
    )
  return value


def harmonic_mean(values, axis=None):
  """scipy.stats.hmean of the values clamped at EPS, as the evaluators take it.

  scipy is imported here: its import costs about 0.65 s, which every start of
  train.py would otherwise pay.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  return stats.hmean(np.maximum(values, EPS), axis=axis)


def official_score_ci95(year, labels, scores):
  """The evaluators' "official score ci95": a jackknife half-width.

  Written as in the 2022 to 2026 evaluators (after Mesaros et al., TASLP
  2019), and on their data, so the figure compares with theirs:
    - the clips of every type and section are pooled into one AUC and one
      pAUC, although scores of different machine types share no scale;
    - replicate i leaves out clip i;
    - sigma = sqrt(sum((theta_i - mean(theta))**2) / (n * (n - 1))), which
      is the usual jackknife variance divided by (n - 1)**2; hence the tiny
      published figures (about 1e-5);
    - half-width = |t.ppf((1 - 0.95) / 2, n - 1)| * sigma;
    - the result is the mean of the AUC's and the pAUC's half-widths.
  It is not an interval for the official score itself.

  Args:
    year: the DCASE year, 2022 to 2026.
    labels: 1-D 0/1 labels of every test clip of every type and section.
    scores: their anomaly scores. The evaluators' order (types, sections and
      file names sorted) only moves the last bits.

  Returns:
    The half-width, as the evaluators write it.

  Raises:
    AeasdError: on a year before 2022, whose evaluators report none, or bad
      inputs.
  """
  year = check_year(year)
  if year < 2022:
    raise AeasdError(
      f'The DCASE {year} evaluator reports no official score ci95; expected'
      ' a year from 2022.'
    )
  labels, scores = roc.check_inputs(labels, scores, 'official_score_ci95')
  half_widths = [
    _jackknife_ci95(labels, scores, max_fpr) for max_fpr in (None, MAX_FPR)
  ]
  return float(np.mean(half_widths))


def _jackknife_ci95(labels, scores, max_fpr):
  n = labels.size
  keep = np.ones(n, bool)
  thetas = np.empty(n)
  for i in range(n):
    keep[i] = False
    thetas[i] = roc.roc_auc_score(labels[keep], scores[keep], max_fpr)
    keep[i] = True
  sigma = np.sqrt(np.sum((thetas - np.mean(thetas)) ** 2) / (n * (n - 1)))
  from scipy import stats  # pylint: disable=g-import-not-at-top  # Slow.

  return np.abs(stats.t.ppf((1 - CONFIDENCE) / 2, n - 1)) * sigma


def type_averages(table):
  """Arithmetic means per type and over types: DCASE 2020's summary.

  The 2020 evaluator writes each type's mean over its ids ("Average"); the
  baseline's README and AE-ASD then average those over the types.

  Args:
    table: {type: {id: {metric name: value}}}, e.g. section_metrics(2020).

  Returns:
    ({type: {metric name: mean}}, {metric name: mean over types}). A nan
    value (an id the caller could not score) is left out, as
    2020 result tables do.
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # An all-nan mean is nan.
    per_type = {t: _means(by_id.values()) for t, by_id in table.items()}
    return per_type, _means(per_type.values())


def _means(dicts):
  dicts = list(dicts)
  return {key: float(np.nanmean([d[key] for d in dicts])) for key in dicts[0]}
