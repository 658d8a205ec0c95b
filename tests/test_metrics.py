"""Tests for aeasd_jax.metrics against scikit-learn as the oracle.

The DCASE 2020 evaluator scores with scikit-learn, so results must agree.
"""

import numpy as np
import pytest

from aeasd_jax.metrics import roc
from aeasd_jax.errors import AeasdError

MAX_FPRS = (None, 0.1, 0.3)


@pytest.fixture(name='sk', scope='module')
def fixture_sk():
  return pytest.importorskip('sklearn.metrics')


def _random_case(seed):
  """Labels and scores of a size, balance and tie pattern picked by seed."""
  rng = np.random.default_rng(seed)
  if seed % 4 == 0:
    n = int(rng.choice([2, 3, 5]))
  else:
    n = int(rng.integers(2, 2001))
  pos_rate = rng.choice([0.5, 0.2, 0.02, 0.9])
  y = rng.random(n) < pos_rate
  # Forcing one clip of each class keeps every case well defined.
  first, second = rng.choice(n, size=2, replace=False)
  y[first], y[second] = True, False

  kind = seed % 5
  shift = rng.normal(0.0, 1.0) * y
  if kind == 0:
    # A handful of integer levels: most clips tie with many others.
    score = rng.integers(0, int(rng.choice([1, 2, 3, 5])), n) + (
      rng.random(n) < 0.3 * y
    )
  elif kind == 1:
    score = rng.normal(size=n) + shift
  elif kind == 2:
    score = np.round(rng.normal(size=n) + shift, 1)
  elif kind == 3:
    score = (rng.exponential(size=n) + shift).astype(np.float32)
  else:
    score = rng.integers(-3, 4, n).astype(np.float64) * 0.1

  label_dtype = (np.int64, bool, np.float64)[seed % 3]
  return y.astype(label_dtype), score


@pytest.mark.numerics
@pytest.mark.parametrize('seed', range(300))
def test_matches_sklearn_on_random_cases(sk, seed):
  y, score = _random_case(seed)

  got = roc.roc_curve(y, score)
  want = sk.roc_curve(y, score)
  for name, g, w in zip(('fpr', 'tpr', 'thresholds'), got, want):
    assert g.shape == w.shape, name
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-15, err_msg=name)

  for max_fpr in MAX_FPRS:
    assert roc.roc_auc_score(y, score, max_fpr=max_fpr) == pytest.approx(
      sk.roc_auc_score(y, score, max_fpr=max_fpr), rel=0, abs=1e-12
    )


@pytest.mark.numerics
def test_million_clips_match_sklearn(sk):
  rng = np.random.default_rng(7)
  y = rng.random(1_000_000) < 0.1
  # Rounding leaves both long tie runs and many distinct thresholds.
  score = np.round(rng.normal(size=y.size) + 0.5 * y, 3)

  got = roc.roc_curve(y, score)
  want = sk.roc_curve(y, score)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-15)
  for max_fpr in (None, 0.1):
    assert roc.roc_auc_score(y, score, max_fpr=max_fpr) == pytest.approx(
      sk.roc_auc_score(y, score, max_fpr=max_fpr), rel=0, abs=1e-12
    )


@pytest.mark.numerics
@pytest.mark.parametrize('score', [[-0.0, 0.0, 1.0], [0.0, -0.0, 1.0]])
def test_signed_zero_threshold_matches_sklearn(sk, score):
  # 0.0 and -0.0 tie, so the sign of their shared threshold depends on the
  # order the sort leaves tied clips in.
  y = [0, 1, 1]
  got = roc.roc_curve(y, score)[2]
  want = sk.roc_curve(y, score)[2]
  np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_known_values():
  y = [0, 0, 1, 1]
  assert roc.roc_auc_score(y, [0.1, 0.4, 0.35, 0.8]) == 0.75
  assert roc.roc_auc_score(y, [0, 1, 2, 3]) == 1.0
  assert roc.roc_auc_score(y, [0, 1, 2, 3], max_fpr=0.1) == 1.0
  assert roc.roc_auc_score(y, [3, 2, 1, 0]) == 0.0
  # All scores tied is exactly chance, for AUC and pAUC alike.
  assert roc.roc_auc_score(y, [1, 1, 1, 1]) == 0.5
  assert roc.roc_auc_score(y, [1, 1, 1, 1], max_fpr=0.1) == 0.5


def test_curve_starts_at_origin_with_infinite_threshold():
  fpr, tpr, thresholds = roc.roc_curve([0, 1, 0, 1], [0.2, 0.9, 0.4, 0.3])
  assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
  assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
  assert np.all(np.diff(thresholds) < 0)


@pytest.mark.parametrize(
  'y, score, match',
  [
    (
      [1, 1, 1],
      [0.1, 0.2, 0.3],
      r'needs both normal \(0\) and anomalous \(1\) clips; '
      r'got only label 1 \(n=3\)',
    ),
    ([0, 0], [0.1, 0.2], r'got only label 0 \(n=2\)'),
    ([], [], 'got no clips'),
    (
      [0, 1, 1],
      [0.1, np.nan, 0.3],
      r'expects finite anomaly scores; got 1 NaN or Inf value\(s\), '
      'first at index 1',
    ),
    ([0, 1, 1], [0.1, 0.2, np.inf], 'expects finite anomaly scores'),
    ([0, 1, 1], [-np.inf, 0.2, 0.3], 'expects finite anomaly scores'),
    ([0, 1, 1], [0.1, 0.2], 'one score per label; got 3 labels and 2 scores'),
    ([0, 1, 2], [0.1, 0.2, 0.3], r'labels 0 \(normal\) or 1 \(anomalous\)'),
    ([-1, 1], [0.1, 0.2], r'labels 0 \(normal\) or 1 \(anomalous\)'),
    (['a', 'b'], [0.1, 0.2], r'labels 0 \(normal\) or 1 \(anomalous\)'),
    ([0, 1], ['x', 'y'], 'real-valued numeric scores'),
    ([[0, 1]], [[0.1, 0.2]], '1-D y_true and y_score'),
  ],
)
def test_bad_inputs_raise(y, score, match):
  with pytest.raises(AeasdError, match=match):
    roc.roc_auc_score(y, score)
  with pytest.raises(AeasdError, match=match):
    roc.roc_curve(y, score)


@pytest.mark.parametrize('max_fpr', [0, 0.0, -0.1, 1.5, np.nan, True, '0.1'])
def test_bad_max_fpr_raises(max_fpr):
  with pytest.raises(AeasdError, match=r'max_fpr in \(0, 1\] or None'):
    roc.roc_auc_score([0, 1], [0.1, 0.2], max_fpr=max_fpr)


def test_max_fpr_one_is_full_auc():
  y, score = [0, 1, 0, 1, 1], [0.3, 0.2, 0.1, 0.9, 0.5]
  assert roc.roc_auc_score(y, score, max_fpr=1) == roc.roc_auc_score(y, score)
