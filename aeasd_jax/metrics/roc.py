"""ROC curve, AUC and McClish partial AUC for binary anomaly labels.

NumPy ports of scikit-learn's binary `roc_curve` and `roc_auc_score`.
"""

import numbers

import numpy as np

from aeasd_jax.errors import AeasdError


def check_inputs(y_true, y_score, what):
  """Validates labels and scores; returns 1-D bool labels and raw scores."""
  y_true = np.asarray(y_true)
  y_score = np.asarray(y_score)
  if y_true.ndim != 1 or y_score.ndim != 1:
    raise AeasdError(
      f'{what} expects 1-D y_true and y_score (one entry per clip); got '
      f'shapes {y_true.shape} and {y_score.shape}.'
    )
  if y_true.shape != y_score.shape:
    raise AeasdError(
      f'{what} expects one score per label; got {y_true.size} labels and '
      f'{y_score.size} scores.'
    )
  if y_score.dtype.kind not in 'iuf':
    raise AeasdError(
      f'{what} expects real-valued numeric scores; got dtype {y_score.dtype}.'
    )
  if y_true.dtype.kind not in 'biuf':
    raise AeasdError(
      f'{what} expects labels 0 (normal) or 1 (anomalous); got dtype '
      f'{y_true.dtype}.'
    )
  bad = ~np.isin(y_true, (0, 1))
  if bad.any():
    raise AeasdError(
      f'{what} expects labels 0 (normal) or 1 (anomalous); got '
      f'{np.unique(y_true[bad])[:5].tolist()} at {int(bad.sum())} '
      f'position(s), first at index {int(np.argmax(bad))}.'
    )
  non_finite = ~np.isfinite(y_score)
  if non_finite.any():
    raise AeasdError(
      f'{what} expects finite anomaly scores; got {int(non_finite.sum())} '
      f'NaN or Inf value(s), first at index {int(np.argmax(non_finite))}.'
    )
  y_true = y_true == 1
  n_pos = int(y_true.sum())
  if n_pos == 0 or n_pos == y_true.size:
    if y_true.size == 0:
      got = 'no clips'
    else:
      got = f'only label {int(n_pos > 0)} (n={y_true.size})'
    raise AeasdError(
      f'{what} needs both normal (0) and anomalous (1) clips; got {got}.'
    )
  return y_true, y_score


def _roc_curve(y_true, y_score):
  """The curve for inputs that `check_inputs` has already accepted."""
  # A stable descending sort in scikit-learn's own way, so that tied scores of
  # opposite signed zero yield the very same threshold value.
  last = y_score.size - 1
  order = last - np.argsort(y_score[::-1], kind='stable')[::-1]
  y_score = y_score[order]
  y_true = y_true[order]

  # The last index of each run of equal scores: the curve moves only between
  # distinct thresholds, so tied clips enter it together.
  ends = np.append(np.flatnonzero(np.diff(y_score)), last)
  tps = np.cumsum(y_true, dtype=np.float64)[ends]
  fps = 1 + ends.astype(np.float64) - tps
  thresholds = y_score[ends].astype(np.float64)

  # Collinear interior points never change the area; dropping them gives the
  # same arrays scikit-learn returns with drop_intermediate=True.
  if fps.size > 2:
    corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
    keep = np.concatenate(([True], corner, [True]))
    fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]

  fps = np.concatenate(([0.0], fps))
  tps = np.concatenate(([0.0], tps))
  thresholds = np.concatenate(([np.inf], thresholds))
  return fps / fps[-1], tps / tps[-1], thresholds


def _trapezoid(y, x):
  # Summed in exactly scipy.integrate.trapezoid's order so results agree to
  # the last bit with scikit-learn's `auc`.
  return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_curve(y_true, y_score):
  """Receiver operating characteristic for anomaly scores.

  Matches `sklearn.metrics.roc_curve(y_true, y_score)` for binary labels.

  Args:
    y_true: 1-D labels, 0 (normal) or 1 (anomalous); bool is accepted.
    y_score: 1-D finite anomaly scores, higher meaning more anomalous.

  Returns:
    `(fpr, tpr, thresholds)` as float64 arrays. `thresholds` is decreasing,
    starts at +inf, and point i counts clips with score >= thresholds[i].

  Raises:
    AeasdError: on mismatched lengths, labels outside {0, 1}, a single class,
      or NaN or Inf scores.
  """
  return _roc_curve(*check_inputs(y_true, y_score, 'roc_curve'))


def roc_auc_score(y_true, y_score, max_fpr=None):
  """Area under the ROC curve, or the McClish-standardised partial AUC.

  Matches `sklearn.metrics.roc_auc_score(y_true, y_score, max_fpr=max_fpr)`
  for binary labels. DCASE 2020 Task 2 reports pAUC with `max_fpr=0.1`.

  Args:
    y_true: 1-D labels, 0 (normal) or 1 (anomalous); bool is accepted.
    y_score: 1-D finite anomaly scores, higher meaning more anomalous.
    max_fpr: None or 1 for the full AUC; otherwise the upper end of the
      false-positive-rate range, in (0, 1).

  Returns:
    The AUC; with `max_fpr` < 1, the partial AUC over [0, max_fpr] rescaled so
    that chance scores 0.5 and a perfect detector 1.

  Raises:
    AeasdError: on mismatched lengths, labels outside {0, 1}, a single class,
      NaN or Inf scores, or `max_fpr` outside (0, 1].
  """
  if max_fpr is not None:
    if (
      not isinstance(max_fpr, numbers.Real)
      or isinstance(max_fpr, (bool, np.bool_))
      or not 0 < max_fpr <= 1
    ):
      raise AeasdError(
        f'roc_auc_score expects max_fpr in (0, 1] or None; got {max_fpr!r}.'
      )
  fpr, tpr, _ = _roc_curve(*check_inputs(y_true, y_score, 'ROC AUC'))
  if max_fpr is None or max_fpr == 1:
    return _trapezoid(tpr, fpr)

  stop = np.searchsorted(fpr, max_fpr, 'right')
  # Linear interpolation puts a curve point exactly at max_fpr.
  tpr_at_max = np.interp(
    max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1]
  )
  partial = _trapezoid(
    np.append(tpr[:stop], tpr_at_max), np.append(fpr[:stop], max_fpr)
  )
  # McClish: map the chance area (0.5 * max_fpr**2) to 0.5 and the perfect
  # area (max_fpr) to 1, so pAUC reads on the same scale as AUC.
  min_area = 0.5 * max_fpr**2
  max_area = max_fpr
  return float(0.5 * (1 + (partial - min_area) / (max_area - min_area)))
