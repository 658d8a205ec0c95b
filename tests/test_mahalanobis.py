"""The selective Mahalanobis score against the baseline's formula in NumPy.

The oracle is written from nttcslab/dcase2023_task2_baseline_ae:
networks/dcase2023t2_ae/dcase2023t2_ae.py (the covariance pass in train()
and the MAHALA branch of eval()) and networks/criterion/mahala.py.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aeasd_jax.data import cache as cache_lib
from aeasd_jax.scoring import mahalanobis
from aeasd_jax.models import autoencoders
from aeasd_jax.scoring import reconstruction
from aeasd_jax.errors import AeasdError
from configs import default

N_MELS = 8
FRAMES = 3
BATCH = 8  # Windows per batch of the covariance pass.
U32 = np.finfo(np.float32).eps / 2
U64 = np.finfo(np.float64).eps / 2

# Clip lengths in frames; windows = length - FRAMES + 1.
SOURCE_TRAIN = (10, 11, 12, 13, 14, 15)  # Clips 0-5: 8 to 13 windows.
TARGET_TRAIN = (12, 16, 9)  # Clips 6-8: 10, 14 and 7 windows.
# Clips 9-13, ragged: source-like, target-like, source-like, near the
# target (mel 0 at a target clip's level), source-like.
TEST = (7, 20, 13, 30, 22)
TARGET_MEL0 = (-60.0, 0.0, 60.0)
NEAR_TARGET = 12
SOURCE, TARGET = mahalanobis.DOMAINS
# Model 0: both domains; model 1: source only (its target covariance is its
# source one); model 2: 8+9+10+13 + 7+10 = 57 windows, 7 batches of 8 and a
# batch of one window, which the baseline skips.
CLIP_LISTS = (
  [0, 1, 2, 3, 4, 5, 6, 7, 8],
  [0, 1, 2, 3, 4, 5],
  [0, 1, 2, 5, 8, 6],
)
SEEDS = (1, 2, 3)
TEST_CLIPS = list(range(9, 14))
# The float64 runs: models 0 and 2's clips, with random networks.
F64_CLIP_LISTS = (CLIP_LISTS[0], CLIP_LISTS[2])
F64_SEEDS = (SEEDS[0], SEEDS[2])


def _domain(c):
  return TARGET if 6 <= c <= 8 else SOURCE


def _domains(clips):
  return [_domain(c) for c in clips]


@pytest.fixture(scope="module")
def features():
  """A FeatureCache of synthetic clips whose domains differ in mel 0."""
  rng = np.random.default_rng(0)
  pieces = []
  for c, length in enumerate(SOURCE_TRAIN + TARGET_TRAIN + TEST):
    # Each clip its own level (dB-like offsets), so that the clips' mean
    # residuals differ and the batches' centring matters.
    level = 5 + rng.normal(0, 2, N_MELS)
    if _domain(c) == TARGET:
      level[0] = TARGET_MEL0[c - 6]
    if c == NEAR_TARGET:
      level[0] = TARGET_MEL0[-1]
    pieces.append(level + rng.normal(0, 1, (length, N_MELS)))
  lengths = np.asarray([len(p) for p in pieces], np.int64)
  return cache_lib.FeatureCache(
    directory=pathlib.Path("synthetic"),
    frames=np.concatenate(pieces).astype(np.float32),
    clips=tuple(f"clip_{c}" for c in range(len(pieces))),
    offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
    lengths=lengths,
    bad_files=(),
  )


def _model_config(compute_dtype="float32"):
  config = default.get_config().model
  config.n_mels = N_MELS
  config.frames = FRAMES
  config.hidden = 8
  config.depth = 1
  config.bottleneck = 2
  config.compute_dtype = compute_dtype
  return config


def _stack(networks):
  parts = [nnx.split(n, nnx.Param, nnx.BatchStat) for n in networks]
  params = jax.tree.map(lambda *x: np.stack(x), *[p[1] for p in parts])
  stats = jax.tree.map(lambda *x: np.stack(x), *[p[2] for p in parts])
  return parts[0][0], params, stats


def _model(stacked, m):
  graphdef, params, stats = stacked
  return graphdef, *jax.tree.map(lambda x: x[m : m + 1], (params, stats))


def _windows(features, c):
  frames = np.asarray(features.clip_frames(c), np.float64)
  return np.stack(
    [frames[i : i + FRAMES] for i in range(len(frames) - FRAMES + 1)]
  )


def _baseline_covariances(rows, domains, seed):
  """The baseline's covariance pass, plainly, in float64.

  rows: [windows, FRAMES, N_MELS] residuals of the model's clips in list
  order; domains: their DOMAINS indices.
  """
  order = np.random.default_rng(seed).permutation(len(rows))  # shuffle=True
  scatter = np.zeros((2, N_MELS, N_MELS))
  count = np.zeros(2, np.int64)
  for first in range(0, len(order), BATCH):
    batch = order[first : first + BATCH]
    if len(batch) <= 1:  # `if data.shape[0] <= 1: continue`
      continue
    for d in (0, 1):
      chosen = batch[domains[batch] == d]
      if not len(chosen):  # `if n_target > 0` (no source: a zero product)
        continue
      diff = rows[chosen].reshape(-1, N_MELS)  # diff[...].view(-1, n_mels)
      diff = diff - diff.mean(0)  # cov_v_diff
      scatter[d] += diff.T @ diff  # cov_v(diff, num=1)
      count[d] += len(chosen)  # num_source += n_source: windows, not rows
  covariance = np.zeros_like(scatter)
  covariance[0] = scatter[0] / (count[0] - 1)
  # `if num_target == 0: cov_x_target = cov_x_source.clone()`
  covariance[1] = scatter[1] / (count[1] - 1) if count[1] else covariance[0]
  return covariance, count


def _baseline_forms(rows, precision):
  """Both domains' forms of the MAHALANOBIS branch of eval(), in float64.

  mahalanobis(..., reduction=False) gives delta @ P @ delta.T over all the
  clip's rows, then a mean over dim 1 and a sum / num: the mean over all
  pairs, which is m @ P @ m for the mean row m. The score is their min.
  """
  delta = rows.reshape(-1, N_MELS)
  pairs = delta @ precision @ delta.T  # [2, rows, rows]
  return pairs.mean(-1).sum(-1) / len(delta)


def _covariance_atol(u, rows, domains, windows, residual_error=0.0):
  """[2, N_MELS, N_MELS] bounds on each covariance entry's rounding error.

  With M_i the largest |residual| of mel bin i among a domain's rows, and
  residual_error (delta) where the residuals come from a forward pass: a
  residual is rounded once (u M_i); a batch mean of at most n_b = FRAMES *
  BATCH rows errs by (n_b + 1) u M_i (a recursive sum and a division,
  Higham 2002, ch. 4); the subtraction rounds once more, so a centred
  entry (|c_i| <= 2 M_i) errs by (n_b + 4) u M_i + 2 delta. A product c_i
  c_j then errs by (n_b + 5) u 4 M_i M_j + 4 delta (M_i + M_j), and summing
  it over a batch's rows and over the K batches adds (n_b + K) u 4 M_i M_j.
  There are FRAMES rows per window, divided (rounding once more) by
  windows - 1.
  """
  n_b = FRAMES * BATCH
  batches = -(-len(rows) // BATCH)
  bounds = []
  for d in (0, 1):
    # No target windows: the target covariance is the source one.
    d = d if windows[d] else 0
    big = np.abs(rows[domains == d]).reshape(-1, N_MELS).max(0)
    big = big + residual_error
    per_row = (2 * n_b + batches + 6) * u * np.outer(2 * big, 2 * big)
    per_row += 4 * residual_error * (big[:, None] + big[None, :])
    bounds.append(FRAMES * windows[d] / (windows[d] - 1) * per_row)
  return np.stack(bounds)


def _assert_within(actual, expected, atol):
  """|actual - expected| <= atol entrywise, atol an array."""
  ratio = np.abs(np.asarray(actual, np.float64) - expected) / atol
  assert np.all(ratio <= 1), f"error up to {ratio.max():.3g} x the bound"


def _kept(covariance, eps):
  """The eigenvalues mahalanobis.pseudo_inverse keeps, exactly (float64)."""
  values = np.linalg.eigvalsh(np.asarray(covariance, np.float64))
  return values[values > N_MELS * eps * values[-1]]


def _inverse_rtol(u, covariance):
  """Relative (Frobenius) error of the computed pseudo-inverse: 3 n cond u.

  cond is over the eigenvalues kept (all of them at full rank, where the
  pseudo-inverse is the inverse). The symmetric eigendecomposition is
  backward stable (Golub and Van Loan, Matrix Computations, 2013, 8.3): the
  computed values and vectors are exact for C + E, |E| <= p(n) u |C|, and
  the vectors orthonormal to p(n) u. A kept 1 / lambda then errs by p(n) u
  cond relatively, the kept subspace turns by p(n) u cond (the dropped
  eigenvalues being ~0, the gap is the smallest kept one), and V diag V^T
  rounds by n u more: with p(n) = n, within 3 n cond u. The same bound holds
  for an LU inverse (Higham 2002, ch. 14), torch.inverse's.
  """
  kept = _kept(covariance, 2 * u)
  return 3 * N_MELS * kept[-1] / kept[0] * u


def _precision_error(u, covariance, covariance_atol):
  """Bound on |P - inv(C_exact)|_F for P the computed inverse of C, atol off.

  The inverse's own rounding (_inverse_rtol), plus the perturbation bound
  |inv(C + E) - inv(C)| <= |inv(C)|^2 |E| / (1 - |inv(C)| |E|), with
  Frobenius norms (no smaller than the 2-norms the bound is for).
  """
  inverse = np.linalg.norm(np.linalg.inv(covariance))
  e = np.linalg.norm(covariance_atol)
  assert inverse * e < 0.5
  return _inverse_rtol(u, covariance) * inverse + inverse**2 * e / (
    1 - inverse * e
  )


def _form_atol(u, mean, mean_error, precision):
  """A bound on the error of m @ P @ m when m errs by mean_error per entry.

  2 mean_error sum_ij |P_ij| |m_j| (first order), and the two sums of
  N_MELS terms each add (N_MELS + 1) u sum_ij |m_i| |P_ij| |m_j|.
  """
  a, p = np.abs(mean), np.abs(precision)
  return 2 * mean_error * np.sum(p @ a) + (2 * N_MELS + 2) * u * (a @ p @ a)


def _score_atol(u, clip_rows, precision, residual_error=0.0, precision_error=0):
  """Bound on a clip's score error, precision given up to precision_error.

  The mean of n rows, each rounded once, errs by (n + 2) u max|r| plus the
  residuals' error; an error E of P moves m @ P @ m by at most |m|^2 |E|.
  The min of two forms errs by at most the larger of their errors.
  """
  mean = clip_rows.reshape(-1, N_MELS).mean(0)
  mean_error = (clip_rows.size / N_MELS + 2) * u * np.abs(clip_rows).max()
  mean_error += residual_error
  return max(
    _form_atol(u, mean, mean_error, p) + mean @ mean * precision_error
    for p in np.asarray(precision, np.float64)
  )


def _forward_error(u, params, max_input):
  """A first-order bound on a residual entry's error in a forward pass.

  For the untrained networks here (zero biases; BatchNorm at mean 0,
  variance 1, scale 1, offset 0, so it and ReLU grow nothing): a dense layer
  of K inputs grows a bound on its input by at most g = K max|W|, and errs
  by (K + 4) u (its sum; BatchNorm's four operations) times its output's
  bound, which the later layers grow by their g. So with inputs up to X,
  |error| <= u X (sum_l (K_l + 4) + 1) prod_l max(g_l, 1), plus u X for the
  subtraction of the input.
  """
  kernels = [
    np.abs(np.asarray(leaf))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if "kernel" in jax.tree_util.keystr(path)
  ]
  fan_in = [k.shape[-2] for k in kernels]
  growth = np.prod([max(n * k.max(), 1.0) for n, k in zip(fan_in, kernels)])
  return u * max_input * ((sum(fan_in) + 4 * len(fan_in) + 1) * growth + 1)


def _fit_and_score(stacked, features, clip_lists, seeds):
  """(MahalanobisStats, scores of TEST_CLIPS) of stacked autoencoders."""
  stats = mahalanobis.fit_clip_lists(
    *stacked,
    features,
    clip_lists,
    [_domains(clips) for clips in clip_lists],
    frames_per_window=FRAMES,
    interpolate=False,
    batch_size=BATCH,
    seeds=seeds,
  )
  scores = mahalanobis.score_clip_lists(
    *stacked,
    features,
    [TEST_CLIPS] * len(clip_lists),
    stats.precision,
    frames_per_window=FRAMES,
    interpolate=False,
    batch_windows=128,
  )
  return stats, scores


def _exact_models(model_config, count):
  """(stacked models, their float64 output biases): reconstruction = bias."""
  networks = []
  for m in range(count):
    network = autoencoders.build(model_config, nnx.Rngs(m))
    network.output.kernel[...] = 0.0
    network.output.bias[...] = np.random.default_rng(10 + m).normal(
      0, 1, network.output.bias.shape
    )
    networks.append(network)
  bias = [np.asarray(n.output.bias[...], np.float64) for n in networks]
  return _stack(networks), bias


@pytest.fixture(scope="module")
def exact(features):
  """Float32 models with a zero output kernel: reconstruction = output bias.

  Their residuals are exact in float64 (bias - window), so the oracle
  compares the Mahalanobis arithmetic alone.
  """
  stacked, bias = _exact_models(_model_config(), len(CLIP_LISTS))
  stats, scores = _fit_and_score(stacked, features, CLIP_LISTS, SEEDS)

  def rows(m, c):
    return bias[m].reshape(FRAMES, N_MELS) - _windows(features, c)

  return stacked, stats, scores, rows


def _oracle_rows(rows, m, clips):
  all_rows = np.concatenate([rows(m, c) for c in clips])
  domains = np.concatenate(
    [
      np.full(len(rows(m, c)), mahalanobis.DOMAINS.index(_domain(c)))
      for c in clips
    ]
  )
  return all_rows, domains


@pytest.mark.parametrize("m", range(len(CLIP_LISTS)))
def test_covariances_equal_the_baseline_formula(exact, m):
  _, stats, _, rows = exact
  all_rows, domains = _oracle_rows(rows, m, CLIP_LISTS[m])
  expected, count = _baseline_covariances(all_rows, domains, SEEDS[m])
  np.testing.assert_array_equal(stats.windows[m], count)
  atol = _covariance_atol(U32, all_rows, domains, count)
  _assert_within(stats.covariance[m], expected, atol)
  for d in (0, 1):
    # Ample data, full rank: the pseudo-inverse is the float32 covariance's
    # inverse to within the rounding of torch.inverse's, and so within
    # _precision_error of the baseline's exact one.
    computed = stats.covariance[m, d].astype(np.float64)
    inverse = np.linalg.inv(computed)
    assert np.linalg.norm(stats.precision[m, d] - inverse) <= _inverse_rtol(
      U32, computed
    ) * np.linalg.norm(inverse)
    assert np.linalg.norm(
      stats.precision[m, d] - np.linalg.inv(expected[d])
    ) <= _precision_error(U32, computed, atol[d])


def test_a_model_without_target_clips_uses_its_source_covariance(exact):
  _, stats, _, _ = exact
  assert stats.windows[1, 1] == 0
  np.testing.assert_array_equal(stats.covariance[1, 1], stats.covariance[1, 0])


def test_a_batch_of_one_window_is_skipped(exact):
  _, stats, _, _ = exact
  assert stats.windows[2].sum() == 56  # Of 57.


@pytest.mark.parametrize("m", range(len(CLIP_LISTS)))
def test_clip_scores_equal_the_baseline_formula(features, exact, m):
  _, stats, scores, rows = exact
  for c, score in zip(TEST_CLIPS, scores[m]):
    clip_rows = rows(m, c)
    # Forms with the float32 precision: its error is checked above.
    precision = stats.precision[m].astype(np.float64)
    forms = _baseline_forms(clip_rows, precision)
    atol = _score_atol(U32, clip_rows, precision)
    assert score == pytest.approx(min(forms), abs=atol)


def test_a_clip_near_the_target_scores_by_the_target_covariance(exact):
  _, stats, scores, rows = exact
  clip_rows = rows(0, NEAR_TARGET)
  precision = stats.precision[0].astype(np.float64)
  source, target = _baseline_forms(clip_rows, precision)
  # Mel 0 at a target clip's level is far out for the source covariance:
  # max() or the source form alone would score several times higher.
  assert target < source / 4
  score = scores[0][TEST_CLIPS.index(NEAR_TARGET)]
  assert score == pytest.approx(
    target, abs=_score_atol(U32, clip_rows, precision)
  )
  # Model 1 saw no target clip: both its forms are the source one.
  clip_rows = rows(1, NEAR_TARGET)
  precision = stats.precision[1].astype(np.float64)
  source, target = _baseline_forms(clip_rows, precision)
  assert source == target
  assert scores[1][TEST_CLIPS.index(NEAR_TARGET)] == pytest.approx(
    source, abs=_score_atol(U32, clip_rows, precision)
  )


def test_padding_windows_do_not_enter_the_covariance(features, exact):
  stacked, _, _, _ = exact
  used = sorted({c for clips in CLIP_LISTS for c in clips})
  packed = reconstruction.pack_clips(features, used + [NEAR_TARGET], FRAMES)
  # Unshuffled: model 0's 94 windows leave 2 padding slots in its last batch
  # of 8, beside 6 windows that batch's means are taken over.
  starts, domains = mahalanobis.batch_layout(
    packed,
    CLIP_LISTS,
    [_domains(clips) for clips in CLIP_LISTS],
    batch_size=BATCH,
    seeds=None,
  )
  assert np.sum(domains[0] == mahalanobis.PADDING) > 0

  def fit(starts, domains):
    return jax.tree.map(
      np.asarray,
      mahalanobis.fit_statistics(
        *stacked,
        packed.frames,
        starts,
        domains,
        frames_per_window=FRAMES,
        interpolate=False,
      ),
    )

  padding = domains == mahalanobis.PADDING
  # Padding slots pointing at the far-out clip's windows instead of row 0.
  moved = np.where(padding, packed.first_frame[NEAR_TARGET], starts)
  before, after = fit(starts, domains), fit(moved, domains)
  for a, b in zip(before, after):
    np.testing.assert_array_equal(a, b)
  # The mutation: the same slots counted as source windows move model 0's
  # source covariance far beyond rounding (by percents).
  mutated = fit(moved, np.where(padding, 0, domains))
  assert not np.allclose(mutated[0][0, 0], before[0][0, 0], rtol=1e-2)


@pytest.fixture(scope="module")
def float64_runs(features):
  """Random float64 models fitted and scored together and one at a time."""
  before = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    stacked = _stack(
      [
        autoencoders.build(_model_config("float64"), nnx.Rngs(20 + m))
        for m in range(2)
      ]
    )

    together = _fit_and_score(stacked, features, F64_CLIP_LISTS, F64_SEEDS)
    alone = [
      _fit_and_score(
        _model(stacked, m), features, [F64_CLIP_LISTS[m]], [F64_SEEDS[m]]
      )
      for m in range(2)
    ]

    # The oracle's residuals: each model alone, eval-mode BatchNorm.
    def rows(m, c):
      graphdef, params, stats = _model(stacked, m)
      one = jax.tree.map(lambda x: x[0], (params, stats))
      residuals = reconstruction.vector_residuals(
        graphdef, *one, _windows(features, c), False
      )
      return np.asarray(residuals).reshape(-1, FRAMES, N_MELS)

    oracle_rows = {
      (m, c): rows(m, c)
      for m in range(2)
      for c in F64_CLIP_LISTS[m] + TEST_CLIPS
    }
  finally:
    jax.config.update("jax_enable_x64", before)
  max_input = float(np.abs(features.frames).max())
  return stacked, together, alone, oracle_rows, max_input


def _float64_bounds(float64_runs, m):
  """The oracle's covariances of model m and the bounds the runs meet."""
  stacked, _, _, oracle_rows, max_input = float64_runs
  clips = F64_CLIP_LISTS[m]
  all_rows = np.concatenate([oracle_rows[m, c] for c in clips])
  domains = np.concatenate(
    [
      np.full(len(oracle_rows[m, c]), mahalanobis.DOMAINS.index(_domain(c)))
      for c in clips
    ]
  )
  expected, count = _baseline_covariances(all_rows, domains, F64_SEEDS[m])
  params = jax.tree.map(lambda x: x[m], stacked[1])
  residual_error = _forward_error(U64, params, max_input)
  atol = _covariance_atol(U64, all_rows, domains, count, residual_error)
  return expected, count, atol, residual_error


def test_vmapped_models_equal_each_model_alone(float64_runs):
  _, together, alone, oracle_rows, _ = float64_runs
  for m, (stats, scores) in enumerate(alone):
    expected, _, atol, residual_error = _float64_bounds(float64_runs, m)
    np.testing.assert_array_equal(together[0].windows[m], stats.windows[0])
    # Each within atol of the exact covariance, so within 2 atol of another.
    _assert_within(together[0].covariance[m], stats.covariance[0], 2 * atol)
    precision_error = max(
      _precision_error(U64, expected[d], atol[d]) for d in (0, 1)
    )
    for c, a, b in zip(TEST_CLIPS, together[1][m], scores[0]):
      bound = _score_atol(
        U64,
        oracle_rows[m, c],
        np.linalg.inv(expected),
        residual_error,
        precision_error,
      )
      assert a == pytest.approx(b, abs=2 * bound)


def test_float64_covariances_and_scores_equal_the_baseline_formula(
  float64_runs,
):
  """Random models: the residual is the eval-mode reconstruction's."""
  _, (stats, scores), _, oracle_rows, _ = float64_runs
  for m in range(len(F64_CLIP_LISTS)):
    expected, count, atol, residual_error = _float64_bounds(float64_runs, m)
    np.testing.assert_array_equal(stats.windows[m], count)
    _assert_within(stats.covariance[m], expected, atol)
    for c, score in zip(TEST_CLIPS, scores[m]):
      forms = _baseline_forms(oracle_rows[m, c], stats.precision[m])
      bound = _score_atol(
        U64, oracle_rows[m, c], stats.precision[m], residual_error
      )
      assert score == pytest.approx(min(forms), abs=bound)


def test_too_few_source_windows_is_refused(features, exact):
  stacked, _, _, _ = exact
  with pytest.raises(AeasdError, match="0 source training windows"):
    mahalanobis.fit_clip_lists(
      *stacked,
      features,
      [[6], [7], [8]],
      [[TARGET]] * 3,
      frames_per_window=FRAMES,
      interpolate=False,
      batch_size=BATCH,
      seeds=None,
      names=["fan", "pump", "valve"],
    )


def test_clip_domain_follows_the_file_name():
  assert mahalanobis.clip_domain("a/section_00_target_train_normal_0.wav") == (
    TARGET
  )
  assert mahalanobis.clip_domain("section_00_source_test_anomaly_1.wav") == (
    SOURCE
  )


# Few windows. IDNN models give one residual row a window (the centre
# frame's), fitted in clip order: clips 0-3 give 40 source windows, 5 batches
# of BATCH; model 0's target domain is clip 4's 4 windows, fewer than N_MELS,
# model 1's clip 5's 8, exactly N_MELS, each a batch of its own, whose
# centred rows span at most 3 and 7 of the N_MELS dimensions. Clip 4's mel 0
# sits at the log floor (a band a quiet machine never rises above) and the
# models' bias there is 0, so model 0's target variance of mel 0 is exactly
# zero: its LU inverse fails whatever the rounding, where a rank lost to
# rounding alone would give distances of a sign that varies by CPU.
FEW_LENGTHS = (12, 12, 12, 12, 6, 10, 9, 14, 20)  # Clips 6-8: test clips.
FEW_CLIP_LISTS = ([0, 1, 2, 3, 4], [0, 1, 2, 3, 5])
FEW_DOMAINS = [[SOURCE] * 4 + [TARGET]] * 2
FEW_TEST_CLIPS = [6, 7, 8]
LOG_FLOOR = -100.0


def _fit_few(stacked, features):
  return mahalanobis.fit_clip_lists(
    *stacked,
    features,
    FEW_CLIP_LISTS,
    FEW_DOMAINS,
    frames_per_window=FRAMES,
    interpolate=True,
    batch_size=BATCH,
    seeds=None,
    names=["fan/seed0", "pump/seed0"],
  )


@pytest.fixture(scope="module")
def few_windows():
  """(stacked IDNN models, their FeatureCache, their MahalanobisStats)."""
  rng = np.random.default_rng(1)
  pieces = [
    5 + rng.normal(0, 2, N_MELS) + rng.normal(0, 1, (length, N_MELS))
    for length in FEW_LENGTHS
  ]
  pieces[4][:, 0] = LOG_FLOOR
  lengths = np.asarray(FEW_LENGTHS, np.int64)
  features = cache_lib.FeatureCache(
    directory=pathlib.Path("synthetic"),
    frames=np.concatenate(pieces).astype(np.float32),
    clips=tuple(f"clip_{c}" for c in range(len(pieces))),
    offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
    lengths=lengths,
    bad_files=(),
  )
  config = _model_config()
  config.name = "IDNN"
  stacked, _ = _exact_models(config, len(FEW_CLIP_LISTS))
  stacked[1]["output"]["bias"][..., 0] = 0.0  # Residual: exactly -LOG_FLOOR.
  return stacked, features, _fit_few(stacked, features)


def _domain_scores(stacked, features, precision, d):
  """Every test clip's squared distance under domain d's precision alone."""
  precision = np.asarray(precision)[:, d : d + 1]
  return np.stack(
    mahalanobis.score_clip_lists(
      *stacked,
      features,
      [FEW_TEST_CLIPS] * len(precision),
      np.concatenate([precision, precision], axis=1),
      frames_per_window=FRAMES,
      interpolate=True,
      batch_windows=128,
    )
  )


def test_few_windows_give_finite_non_negative_distances(few_windows):
  stacked, features, stats = few_windows
  np.testing.assert_array_equal(stats.windows, [[40, 4], [40, 8]])
  # The target covariances' ranks, as counted above.
  assert [len(_kept(c, 2 * U32)) for c in stats.covariance[:, 1]] == [3, 7]
  for d in (0, 1):
    scores = _domain_scores(stacked, features, stats.precision, d)
    assert np.all(np.isfinite(scores) & (scores >= 0)), scores
  # The baseline's LU inverses of the same covariances fail.
  lu = _domain_scores(stacked, features, jnp.linalg.inv(stats.covariance), 1)
  assert not np.all(np.isfinite(lu) & (lu >= 0)), lu


def test_the_pseudo_inverse_equals_numpys_in_float64(few_windows):
  _, _, stats = few_windows
  for covariance, precision in zip(
    stats.covariance.reshape(-1, N_MELS, N_MELS),
    stats.precision.reshape(-1, N_MELS, N_MELS),
  ):
    computed = covariance.astype(np.float64)
    oracle = np.linalg.pinv(computed, rcond=N_MELS * 2 * U32, hermitian=True)
    assert np.linalg.norm(precision - oracle) <= _inverse_rtol(
      U32, computed
    ) * np.linalg.norm(oracle)


def test_fewer_windows_than_mel_bins_are_warned_of(few_windows, caplog):
  stacked, features, _ = few_windows
  _fit_few(stacked, features)  # The fixture's fit logged before caplog.
  warned = [
    r.getMessage()
    for r in caplog.records
    if "covariance comes" in r.getMessage()
  ]
  # Model 1's 8 target windows are as many as its mel bins: no warning.
  assert len(warned) == 1
  assert warned[0].startswith(
    "fan/seed0: its target covariance comes from 4 training windows, fewer"
    f" than its {N_MELS} mel bins"
  )


def test_a_mean_residual_in_the_null_space_scores_zero_not_below(few_windows):
  """Its form is 0 up to rounding of either sign; a distance is >= 0."""
  stacked, _, stats = few_windows
  precision = stats.precision[0, 1].astype(np.float64)
  values, vectors = np.linalg.eigh(precision)
  null = vectors[:, values <= N_MELS * 2 * U32 * values[-1]]
  assert null.shape[1] == N_MELS - 3
  means = np.random.default_rng(2).normal(0, 10, (32, null.shape[1])) @ null.T
  bias = np.asarray(stacked[1]["output"]["bias"][...][0], np.float64)
  # One window a clip, whose centre frame leaves the residual `mean`.
  frames = np.stack([(bias, bias - m, bias) for m in means])
  features = cache_lib.FeatureCache(
    directory=pathlib.Path("synthetic"),
    frames=frames.reshape(-1, N_MELS).astype(np.float32),
    clips=tuple(f"clip_{c}" for c in range(len(means))),
    offsets=np.arange(len(means)) * 3,
    lengths=np.full(len(means), 3),
    bad_files=(),
  )
  (scores,) = mahalanobis.score_clip_lists(
    *_model(stacked, 0),
    features,
    [list(range(len(means)))],
    np.stack([stats.precision[0, 1]] * 2)[None],
    frames_per_window=FRAMES,
    interpolate=True,
    batch_windows=128,
  )
  # The residual bias - (bias - mean) rounds twice.
  error = 2 * U32 * np.max(np.abs(bias) + np.abs(means))
  for mean, score in zip(means, scores):
    assert 0 <= score <= _form_atol(U32, mean, error, precision)
