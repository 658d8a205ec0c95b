"""Anomaly scores on the device: per-vector reconstruction errors, per clip.

One jitted call scores many clips for every group and seed at once; ragged
clip lengths are padded to a bucketed length and masked.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError

POOLINGS = ("mean", "max", "gwrp")
# Padded clip lengths are rounded up to this many windows, so clips of nearby
# lengths share one compiled program.
LENGTH_BUCKET = 64
FRAME_ROWS_MIN = 4096


def vector_residuals(graphdef, params, batch_stats, window, interpolate):
  """Reconstruction minus target of each vector, [..., reconstructed dims].

  BatchNorm uses its running statistics (eval mode), as the baselines score:
  a clip's score must not depend on the clips batched with it.
  """
  x, y = window_data.split_window(window, interpolate)
  model = nnx.merge(graphdef, params, batch_stats)
  reconstruction, _ = model(x, train=False)
  return reconstruction - y


def vector_errors(graphdef, params, batch_stats, window, interpolate):
  """Mean squared error of each vector over the reconstructed dims.

  All frames for AE and VAE (decoding the mean), the centre frame for IDNN.
  """
  residuals = vector_residuals(
    graphdef, params, batch_stats, window, interpolate
  )
  return jnp.mean(residuals**2, axis=-1)


def pool(errors, mask, pooling, decay):
  """Per-clip scores from [..., windows] errors; `mask` marks real windows.

  "gwrp" is global weighted rank pooling as in AE-ASD: the r-th largest error
  weighs decay**r (decay 1 is the mean, decay 0 the max).
  """
  if pooling == "mean":
    return jnp.sum(errors * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1)
  if pooling == "max":
    return jnp.max(jnp.where(mask, errors, -jnp.inf), -1)
  ranked = -jnp.sort(jnp.where(mask, -errors, jnp.inf), axis=-1)
  count = jnp.sum(mask, -1, keepdims=True)
  rank = jnp.arange(errors.shape[-1])
  weights = jnp.where(rank < count, decay ** rank.astype(errors.dtype), 0.0)
  ranked = jnp.where(rank < count, ranked, 0.0)
  return jnp.sum(weights * ranked, -1) / jnp.sum(weights, -1)


def scan_clips(
  frames,
  clip_starts,
  clip_windows,
  clip_fn,
  *,
  frames_per_window,
  max_windows,
  clips_per_step,
):
  """[models, clips] per-clip values of stacked models, a step of clips a time.

  Traced inside a jitted caller. clip_fn maps the windows [models,
  clips_per_step, max_windows, frames_per_window, n_mels] of a step and
  their mask [models, clips_per_step, max_windows] (True for real windows)
  to [models, clips_per_step] values. A padding window repeats its clip's
  last window, so every gather reads a real clip; padded clips give 0.

  Args:
    frames: [total_frames, n_mels] log-mel frames of the clips.
    clip_starts: [models, clips] first frame of each clip.
    clip_windows: [models, clips] windows of each clip; 0 marks padding.
    clip_fn: the per-clip function, vmapped over models by the caller.
    frames_per_window: frames per vector (5).
    max_windows: windows per clip after padding, at least clip_windows.max().
    clips_per_step: clips per model per step; divides the clip count.
  """
  num_models, num_clips = clip_starts.shape
  steps = num_clips // clips_per_step
  starts = clip_starts.reshape(num_models, steps, clips_per_step).swapaxes(0, 1)
  counts = clip_windows.reshape(num_models, steps, clips_per_step).swapaxes(
    0, 1
  )
  position = jnp.arange(max_windows)

  def step(_, chunk):
    chunk_starts, chunk_counts = chunk
    mask = position < chunk_counts[..., None]  # [models, clips, windows]
    window_starts = chunk_starts[..., None] + jnp.minimum(
      position, jnp.maximum(chunk_counts[..., None] - 1, 0)
    )
    windows = window_data.gather_windows(
      frames, window_starts, frames_per_window
    )
    values = clip_fn(windows, mask)
    return None, jnp.where(chunk_counts > 0, values, 0.0)

  _, values = jax.lax.scan(step, None, (starts, counts))
  return values.swapaxes(0, 1).reshape(num_models, num_clips)


@functools.partial(
  jax.jit,
  static_argnames=(
    "graphdef",
    "frames_per_window",
    "interpolate",
    "max_windows",
    "clips_per_step",
    "pooling",
  ),
)
def clip_scores(
  graphdef,
  params,
  batch_stats,
  frames,
  clip_starts,
  clip_windows,
  decay,
  *,
  frames_per_window,
  interpolate,
  max_windows,
  clips_per_step,
  pooling,
):
  """Scores of clips for stacked models; one row of clips per model.

  Args:
    graphdef: the network's nnx graph definition.
    params: stacked parameters, leaves [models, ...].
    batch_stats: stacked BatchNorm statistics.
    frames: [total_frames, n_mels] log-mel frames of the clips.
    clip_starts: [models, clips] first frame of each clip model m scores.
    clip_windows: [models, clips] windows of each clip; 0 marks padding.
    decay: the GWRP decay.
    frames_per_window: frames per vector (5).
    interpolate: IDNN scoring (centre frame only).
    max_windows: windows per clip after padding, at least clip_windows.max().
    clips_per_step: clips scored per model per step; divides the clip count.
    pooling: "mean", "max" or "gwrp".

  Returns:
    [models, clips] float32 scores; padded clips score 0.
  """

  def pooled_errors(windows, mask):
    errors = jax.vmap(vector_errors, in_axes=(None, 0, 0, 0, None))(
      graphdef, params, batch_stats, windows, interpolate
    )
    return pool(errors, mask, pooling, decay)

  return scan_clips(
    frames,
    clip_starts,
    clip_windows,
    pooled_errors,
    frames_per_window=frames_per_window,
    max_windows=max_windows,
    clips_per_step=clips_per_step,
  )


def bucket(n, size):
  """n rounded up to a multiple of size (at least size)."""
  return max(size, -(-n // size) * size)


class PackedClips(NamedTuple):
  """Host frames of some cached clips laid end to end, and where each is."""

  frames: np.ndarray  # [rows, n_mels] float32; zero rows past the clips.
  first_frame: dict  # Clip index -> its first row in `frames`.
  windows: dict  # Clip index -> how many windows it holds.


def pack_clips(cache, clips, frames_per_window):
  """The frames of the cached `clips` (sorted, unique) in one host array."""
  window_data.check_clip_lengths(cache, clips, frames_per_window)
  first_frame = {}
  pieces, offset = [], 0
  for c in clips:
    first_frame[c] = offset
    pieces.append(cache.clip_frames(c))
    offset += int(cache.lengths[c])
  # Rows padded to a power of two: dev, eval and threshold clip sets then
  # share one compiled program instead of one per row count.
  frames = np.zeros(
    (
      max(FRAME_ROWS_MIN, 1 << (offset - 1).bit_length()),
      cache.frames.shape[1],
    ),
    np.float32,
  )
  if pieces:
    frames[:offset] = np.concatenate(pieces)
  # Audio with NaN or Inf is refused when the cache is built, so a
  # non-finite frame is damage, not a scoring result.
  if not np.all(np.isfinite(frames[:offset])):
    bad = next(
      c for c in clips if not np.all(np.isfinite(cache.clip_frames(c)))
    )
    raise AeasdError(
      f"feature cache {cache.directory}: non-finite values in the frames of"
      f" {cache.clips[bad].path}; expected finite log-mel frames. The cache"
      " is damaged: delete the folder to rebuild it"
    )
  windows = {
    c: max(int(cache.lengths[c]) - frames_per_window + 1, 0) for c in clips
  }
  return PackedClips(frames, first_frame, windows)


class ClipLayout(NamedTuple):
  """What scan_clips reads: packed frames and each model's padded clip rows."""

  frames: np.ndarray  # [rows, n_mels] float32.
  starts: np.ndarray  # [models, clips] int32 first frame of each clip.
  counts: np.ndarray  # [models, clips] int32 windows; 0 marks padding.
  max_windows: int
  clips_per_step: int


def layout_clip_lists(cache, clip_lists, *, frames_per_window, batch_windows):
  """The ClipLayout of per-model lists of cached clip indices.

  Shapes are bucketed so a new clip count or length rarely compiles a new
  program.
  """
  used = sorted({c for clips in clip_lists for c in clips})
  packed = pack_clips(cache, used, frames_per_window)
  max_windows = bucket(max(packed.windows.values(), default=1), LENGTH_BUCKET)
  clips_per_step = max(1, batch_windows // max_windows)
  num_clips = bucket(
    max((len(c) for c in clip_lists), default=1), clips_per_step
  )
  starts = np.zeros((len(clip_lists), num_clips), np.int32)
  counts = np.zeros((len(clip_lists), num_clips), np.int32)
  for m, clips in enumerate(clip_lists):
    starts[m, : len(clips)] = [packed.first_frame[c] for c in clips]
    counts[m, : len(clips)] = [packed.windows[c] for c in clips]
  return ClipLayout(packed.frames, starts, counts, max_windows, clips_per_step)


def score_clip_lists(
  graphdef,
  params,
  batch_stats,
  cache,
  clip_lists,
  *,
  frames_per_window,
  interpolate,
  pooling,
  decay,
  batch_windows,
):
  """Scores, for each model m, the cached clips clip_lists[m].

  Every model's clips are scored in the same jitted calls.

  Returns:
    A list with one float64 NumPy array of scores per model.
  """
  layout = layout_clip_lists(
    cache,
    clip_lists,
    frames_per_window=frames_per_window,
    batch_windows=batch_windows,
  )
  scores = clip_scores(
    graphdef,
    params,
    batch_stats,
    jnp.asarray(layout.frames),
    layout.starts,
    layout.counts,
    jnp.float32(decay),
    frames_per_window=frames_per_window,
    interpolate=interpolate,
    max_windows=layout.max_windows,
    clips_per_step=layout.clips_per_step,
    pooling=pooling,
  )
  scores = np.asarray(scores, np.float64)
  return [scores[m, : len(clips)] for m, clips in enumerate(clip_lists)]
