"""The 2023+ DCASE baseline's selective Mahalanobis score (`--score MAHALA`).

After training, one eval-mode pass over each model's training clips gives
source and target covariances of the residual's mel rows; a clip scores the
smaller of its mean residual's squared Mahalanobis norms under the two.

What the baseline (nttcslab/dcase2023_task2_baseline_ae) computes, and so
what this module computes:
- Residual rows. A window's residual (input minus reconstruction, frames x
  n_mels values, frame-major; its sign is immaterial, both uses being
  quadratic) is cut into its frames' n_mels-wide rows (`.view(-1,
  block_size)` with block_size = n_mels): the covariances are n_mels x
  n_mels, over mel bins, not over whole windows.
- Covariance pass. After the last epoch, with BatchNorm's running statistics
  (eval mode), over the training windows in shuffled batches. Each batch's
  source rows are centred on their own mean and their scatter is summed;
  likewise the target rows. A batch of a single window is skipped. The sum
  is divided by the number of windows (not rows) of the domain minus one.
  A model without target windows uses its source covariance for both.
- Inverses. The baseline takes LU inverses (torch.inverse) in float32;
  this module takes pseudo-inverses (see below).
- Clip score. The baseline takes the mean over all pairs (i, j) of the
  clip's residual rows of d_i^T P d_j, which is m^T P m for the mean row m
  of the clip's residual; the clip's score is the smaller of that under the
  source and the target precision P (a min per clip, not per window).

Where it departs from the baseline, and why. A domain of few training
windows (about n_mels or fewer) gives a singular or nearly singular
covariance, whose LU inverse is rounding noise of either sign: squared
distances of -1e8 were scored and tabled. The precision here is the
pseudo-inverse from the symmetric eigendecomposition, dropping eigenvalues
at or below n_mels * eps * the largest, and the quadratic form is clamped at
0 against rounding; both make every squared distance finite and >= 0. Where
the data is ample the covariance has full rank and every eigenvalue lies far
above that cutoff (condition numbers of 40 to 3,000 on the bundled 2023-style
set, against a cutoff at 1 / (n_mels * eps) = 65,536 for 128 mels), so the
pseudo-inverse is the inverse, and the two computed ones differ by at most
about n_mels * cond * eps relatively, as two LU inverses computed in another
order may: scores move at the level of rounding. Below the cutoff an LU inverse
in float32 keeps no correct digit anyway (its relative error is that same
n_mels * cond * eps, then 1 or more).
"""

import functools
import logging
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from aeasd_jax.data import dcase
from aeasd_jax.scoring import reconstruction
from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)

# Order of the domain axis of MahalanobisStats.
DOMAINS = dcase.DOMAINS
# Domain code of a batch slot that holds no window.
PADDING = -1
# Each model's batch count is padded to a multiple of this, so training sets
# of nearby sizes share one compiled program.
BATCH_BUCKET = 16
# The scatter, the means' products and the quadratic forms in full float32:
# on GPUs and TPUs the default precision would round their inputs to
# TF32 or bfloat16, and the inverse of an ill-conditioned covariance
# magnifies such errors.
HIGHEST = jax.lax.Precision.HIGHEST


class MahalanobisStats(NamedTuple):
  """What scoring needs from the covariance pass, as host arrays.

  Store it with np.savez(path, **stats._asdict()) and read it back with
  MahalanobisStats(**np.load(path)).
  """

  covariance: np.ndarray  # [models, 2, n_mels, n_mels], domains as DOMAINS.
  precision: np.ndarray  # The pseudo-inverses of `covariance`.
  windows: np.ndarray  # [models, 2] int64, training windows that entered.


def clip_domain(name):
  """A clip's domain by the baseline's rule: "target" in its file name."""
  return "target" if "target" in os.path.basename(name) else "source"


def residual_rows(graphdef, params, batch_stats, windows, interpolate):
  """[models, ..., rows, n_mels] residuals of stacked models, in mel rows.

  A window's residual is frame-major (window_data.split_window), so its
  consecutive n_mels-wide pieces are its frames: frames_per_window rows for
  the autoencoders, the centre frame alone for IDNN.
  """
  residuals = jax.vmap(
    reconstruction.vector_residuals, in_axes=(None, 0, 0, 0, None)
  )(graphdef, params, batch_stats, windows, interpolate)
  n_mels = windows.shape[-1]
  return residuals.reshape(*residuals.shape[:-1], -1, n_mels)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "frames_per_window", "interpolate")
)
def fit_statistics(
  graphdef,
  params,
  batch_stats,
  frames,
  batch_starts,
  batch_domains,
  *,
  frames_per_window,
  interpolate,
):
  """Source and target residual covariances of stacked models, and inverses.

  Args:
    graphdef: the network's nnx graph definition.
    params: stacked parameters, leaves [models, ...].
    batch_stats: stacked BatchNorm statistics (used, not updated).
    frames: [total_frames, n_mels] log-mel frames of the clips.
    batch_starts: [models, batches, batch_size] int32 first frame of each
      window, in the order the covariance pass batches them.
    batch_domains: [models, batches, batch_size] int32 index into DOMAINS of
      each window; PADDING for a slot without one.
    frames_per_window: frames per vector (5).
    interpolate: IDNN (residual of the centre frame only).

  Returns:
    (covariance, precision, windows): [models, 2, n_mels, n_mels] twice and
    [models, 2] int32, as MahalanobisStats.
  """
  num_models = batch_starts.shape[0]
  n_mels = frames.shape[1]
  domain = jnp.arange(len(DOMAINS))[None, :, None]
  # The accumulators' dtype: float32, or float64 for a float64 model.
  dtype = jax.eval_shape(
    lambda p, b, w: residual_rows(graphdef, p, b, w, interpolate),
    params,
    batch_stats,
    jax.ShapeDtypeStruct(
      (num_models, 1, frames_per_window, n_mels), frames.dtype
    ),
  ).dtype

  def step(carry, batch):
    scatter, count = carry
    starts, domains = batch  # [models, batch_size]
    windows = window_data.gather_windows(frames, starts, frames_per_window)
    rows = residual_rows(graphdef, params, batch_stats, windows, interpolate)
    rows_per_window = rows.shape[-2]
    rows = rows.reshape(num_models, -1, n_mels)  # [models, rows, n_mels]
    # The baseline skips a batch of one window (`data.shape[0] <= 1`), in
    # its covariance pass too; padding slots are no windows.
    kept = jnp.sum(domains != PADDING, -1) > 1
    member = (domains[:, None, :] == domain) & kept[:, None, None]
    row_member = jnp.repeat(member, rows_per_window, axis=-1)[..., None]
    # Each batch is centred on its own domain mean, as the baseline does;
    # besides being its semantics, centring keeps the float32 scatter free
    # of the large dB offsets that raw sums of squares would cancel.
    total = jnp.sum(jnp.where(row_member, rows[:, None], 0), axis=2)
    mean = total / jnp.maximum(jnp.sum(row_member, axis=2), 1)
    centred = jnp.where(row_member, rows[:, None] - mean[:, :, None], 0)
    scatter += jnp.einsum(
      "mdri,mdrj->mdij", centred, centred, precision=HIGHEST
    )
    return (scatter, count + jnp.sum(member, -1, dtype=jnp.int32)), None

  init = (
    jnp.zeros((num_models, len(DOMAINS), n_mels, n_mels), dtype),
    jnp.zeros((num_models, len(DOMAINS)), jnp.int32),
  )
  (scatter, count), _ = jax.lax.scan(
    step,
    init,
    (batch_starts.swapaxes(0, 1), batch_domains.swapaxes(0, 1)),
  )
  # Divided by windows - 1 although the scatter sums frames_per_window rows
  # a window: the baseline counts `n_source` windows. The factor, about
  # frames_per_window, scales both domains' scores alike.
  covariance = scatter / (count - 1).astype(dtype)[..., None, None]
  source, target = covariance[:, 0], covariance[:, 1]
  target = jnp.where((count[:, 1] == 0)[:, None, None], source, target)
  covariance = jnp.stack([source, target], axis=1)
  return covariance, pseudo_inverse(covariance), count


def pseudo_inverse(covariance):
  """Pseudo-inverses of symmetric positive semi-definite [..., n, n] matrices.

  The computed eigenvalues of a covariance are exact for one within about
  n * eps * its largest eigenvalue (the eigensolver's backward error, and
  the scatter's rounding), so those below that are noise, and their inverses
  arbitrary: they are dropped. By signed value, not by magnitude as
  pinv(hermitian=True) does: a rounding-negative eigenvalue kept would weigh
  its direction negatively. What is left, V diag(1 / kept) V^T, is positive
  semi-definite by construction.
  """
  values, vectors = jnp.linalg.eigh(covariance)
  n = covariance.shape[-1]
  cutoff = n * jnp.finfo(covariance.dtype).eps * values[..., -1:]
  kept = values > jnp.maximum(cutoff, 0)
  inverse = jnp.where(kept, 1 / jnp.where(kept, values, 1), 0)
  return jnp.einsum(
    "...ik,...k,...jk->...ij", vectors, inverse, vectors, precision=HIGHEST
  )


def batch_layout(packed, clip_lists, domain_lists, *, batch_size, seeds):
  """[models, batches, batch_size] window starts and domain codes.

  Each model's windows, clip by clip in list order (shuffled with
  np.random.default_rng(seeds[m]).permutation unless seeds is None), cut
  into consecutive batches; the rest of the last batch and the batches
  other models need are PADDING.
  """
  starts, codes = [], []
  for m, (clips, domains) in enumerate(zip(clip_lists, domain_lists)):
    s = [packed.first_frame[c] + np.arange(packed.windows[c]) for c in clips]
    d = [
      np.full(packed.windows[c], DOMAINS.index(domain))
      for c, domain in zip(clips, domains)
    ]
    s = np.concatenate(s or [np.zeros(0, np.int64)])
    d = np.concatenate(d or [np.zeros(0, np.int64)])
    # The baseline's DataLoader shuffles the windows of all training clips
    # together; without it a batch would hold few clips, and centring each
    # batch would take away the differences between clips' mean residuals,
    # which are what a clip's score measures.
    if seeds is not None:
      order = np.random.default_rng(seeds[m]).permutation(len(s))
      s, d = s[order], d[order]
    starts.append(s)
    codes.append(d)
  batches = reconstruction.bucket(
    max((-(-len(s) // batch_size) for s in starts), default=1), BATCH_BUCKET
  )
  batch_starts = np.zeros((len(starts), batches * batch_size), np.int32)
  batch_domains = np.full(batch_starts.shape, PADDING, np.int32)
  for m, (s, d) in enumerate(zip(starts, codes)):
    batch_starts[m, : len(s)] = s
    batch_domains[m, : len(d)] = d
  shape = (len(starts), batches, batch_size)
  return batch_starts.reshape(shape), batch_domains.reshape(shape)


def _check_counts(batch_domains, names):
  """Refuses a model whose covariance would divide by zero or less."""
  kept = np.sum(batch_domains != PADDING, -1, keepdims=True) > 1
  for m, domains in enumerate(batch_domains):
    for code, domain in enumerate(DOMAINS):
      n = int(np.sum((domains == code) & kept[m]))
      if n == 1 or (domain == "source" and n == 0):
        raise AeasdError(
          f"{_name(names, m)}: {n} {domain} training windows enter the"
          " Mahalanobis covariance (config.score.method=mahalanobis);"
          " expected at least 2, since the covariance divides by windows - 1"
        )


def fit_clip_lists(
  graphdef,
  params,
  batch_stats,
  cache,
  clip_lists,
  domain_lists,
  *,
  frames_per_window,
  interpolate,
  batch_size,
  seeds,
  names=None,
):
  """The Mahalanobis statistics of each model m on its clips clip_lists[m].

  All models run in the same jitted call.

  Args:
    graphdef, params, batch_stats: the stacked models, as scoring takes them.
    cache: the FeatureCache.
    clip_lists: per model, the cached indices of its training clips.
    domain_lists: per model, "source" or "target" for each of its clips.
    frames_per_window: frames per vector (5).
    interpolate: IDNN (residual of the centre frame only).
    batch_size: windows per batch of the pass (the baseline's batch_size);
      each batch is centred on its own means, so this is part of the result.
    seeds: per model, a seed for np.random.default_rng that shuffles its
      windows into batches, or None to batch them in clip order.
    names: per model, its name for error messages.

  Returns:
    MahalanobisStats.
  """
  for domains in domain_lists:
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
      raise ValueError(f"unknown domains {unknown}; expected {DOMAINS}")
  used = sorted({c for clips in clip_lists for c in clips})
  packed = reconstruction.pack_clips(cache, used, frames_per_window)
  batch_starts, batch_domains = batch_layout(
    packed, clip_lists, domain_lists, batch_size=batch_size, seeds=seeds
  )
  _check_counts(batch_domains, names)
  covariance, precision, windows = fit_statistics(
    graphdef,
    params,
    batch_stats,
    jnp.asarray(packed.frames),
    batch_starts,
    batch_domains,
    frames_per_window=frames_per_window,
    interpolate=interpolate,
  )
  stats = MahalanobisStats(
    np.asarray(covariance),
    np.asarray(precision),
    np.asarray(windows, np.int64),
  )
  for m in np.flatnonzero(~np.isfinite(stats.precision).all(axis=(1, 2, 3))):
    raise AeasdError(
      f"{_name(names, m)}: the pseudo-inverse of its residual covariance is"
      " not finite (config.score.method=mahalanobis); expected finite"
      " residuals that vary, from weights trained to a finite loss"
    )
  _warn_few_windows(stats.windows, cache.frames.shape[1], names)
  return stats


def _name(names, m):
  return names[m] if names else f"model {m}"


def _warn_few_windows(windows, n_mels, names):
  """Warns of each covariance estimated from fewer windows than mel bins."""
  for m, counts in enumerate(windows):
    for domain, count in zip(DOMAINS, counts):
      # No target windows: the source covariance stands in, warned of.
      if 0 < count < n_mels:
        log.warning(
          "%s: its %s covariance comes from %d training windows, fewer than"
          " its %d mel bins (config.score.method=mahalanobis); the estimate"
          " is rank-deficient or nearly so, and its distances leave out the"
          " directions it could not estimate",
          _name(names, m),
          domain,
          count,
          n_mels,
        )


@functools.partial(
  jax.jit,
  static_argnames=(
    "graphdef",
    "frames_per_window",
    "interpolate",
    "max_windows",
    "clips_per_step",
  ),
)
def clip_scores(
  graphdef,
  params,
  batch_stats,
  precision,
  frames,
  clip_starts,
  clip_windows,
  *,
  frames_per_window,
  interpolate,
  max_windows,
  clips_per_step,
):
  """Selective Mahalanobis scores of clips, one row of clips per model.

  Args:
    graphdef, params, batch_stats: the stacked models.
    precision: [models, 2, n_mels, n_mels] MahalanobisStats.precision.
    frames, clip_starts, clip_windows, frames_per_window, interpolate,
    max_windows, clips_per_step: as reconstruction.clip_scores.

  Returns:
    [models, clips] scores; padded clips score 0.
  """

  def selective(windows, mask):
    rows = residual_rows(graphdef, params, batch_stats, windows, interpolate)
    # [models, clips, windows, rows, n_mels] -> the mean row of each clip.
    real = mask[..., None, None]
    total = jnp.sum(jnp.where(real, rows, 0), axis=(2, 3))
    count = jnp.sum(mask, -1) * rows.shape[-2]
    mean = total / jnp.maximum(count, 1)[..., None].astype(total.dtype)
    forms = jnp.einsum(
      "mci,mdij,mcj->mdc", mean, precision, mean, precision=HIGHEST
    )
    # A positive semi-definite form of a mean row near its null space can
    # round below 0; a squared distance cannot be.
    return jnp.maximum(jnp.min(forms, axis=1), 0)

  return reconstruction.scan_clips(
    frames,
    clip_starts,
    clip_windows,
    selective,
    frames_per_window=frames_per_window,
    max_windows=max_windows,
    clips_per_step=clips_per_step,
  )


def score_clip_lists(
  graphdef,
  params,
  batch_stats,
  cache,
  clip_lists,
  precision,
  *,
  frames_per_window,
  interpolate,
  batch_windows,
):
  """Selective Mahalanobis scores, for each model m, of clips clip_lists[m].

  Every model's clips are scored in the same jitted calls, laid out as
  reconstruction.score_clip_lists lays them out. config.score.pooling does not
  apply: the baseline's score is of the clip's mean residual.

  Returns:
    A list with one float64 NumPy array of scores per model.
  """
  layout = reconstruction.layout_clip_lists(
    cache,
    clip_lists,
    frames_per_window=frames_per_window,
    batch_windows=batch_windows,
  )
  scores = clip_scores(
    graphdef,
    params,
    batch_stats,
    jnp.asarray(precision),
    jnp.asarray(layout.frames),
    layout.starts,
    layout.counts,
    frames_per_window=frames_per_window,
    interpolate=interpolate,
    max_windows=layout.max_windows,
    clips_per_step=layout.clips_per_step,
  )
  scores = np.asarray(scores, np.float64)
  return [scores[m, : len(clips)] for m, clips in enumerate(clip_lists)]
