"""Training windows: one frame array and each group's window start rows.

Frames are stored once; the 5-frame vectors are gathered on the device, so
nothing is copied five times on the host. The arrays are built on the host
(ClipFrames reads the feature cache lazily) and placed by the trainer.
"""

import hashlib
import logging
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown

log = logging.getLogger(__name__)


def stable_hash(text):
  """A 31-bit hash of a string that does not change between runs."""
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


class WindowData(NamedTuple):
  """Device arrays an epoch reads: frames and per-group window start rows.

  Row g of `train_starts` lists the first frame of every training window of
  group g, padded past `train_counts[g]`; likewise for validation.
  """

  frames: jnp.ndarray  # [total_frames, n_mels] float32
  train_starts: jnp.ndarray  # [groups, max_train_windows] int32
  train_counts: jnp.ndarray  # [groups] int32
  val_starts: jnp.ndarray  # [groups, max_val_windows] int32
  val_counts: jnp.ndarray  # [groups] int32
  # Clip examples only (every clip exactly one window long, so a window's
  # clip is its start // frames per window): the class of each clip and,
  # for models that read it, its waveform. None otherwise.
  labels: jnp.ndarray = None  # [clips] int32
  waves: jnp.ndarray = None  # [clips, samples] float32


def window_starts(lengths, frames_per_window):
  """First-frame offsets of every window of clips laid end to end."""
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  return np.concatenate(
    [
      o + np.arange(max(n - frames_per_window + 1, 0))
      for o, n in zip(offsets, lengths)
    ]
    or [np.zeros(0, np.int64)]
  )


def window_count(cache, clips, frames_per_window):
  """How many windows the given cached clips hold."""
  return int(
    np.maximum(
      cache.lengths[np.asarray(clips, np.int64)] - frames_per_window + 1, 0
    ).sum()
  )


def check_clip_lengths(cache, clips, frames_per_window):
  """Every clip must hold at least one window of config.model.frames."""
  clips = np.asarray(clips, np.int64)
  short = clips[cache.lengths[clips] < frames_per_window]
  if len(short):
    first = cache.clips[short[0]]
    more = f" (and {len(short) - 1} more clips)" if len(short) > 1 else ""
    raise AeasdError(
      f"{first.path}: {cache.lengths[short[0]]} frames{more}, fewer than"
      f" config.model.frames={frames_per_window}; expected clips of at least"
      f" {frames_per_window} frames, or a smaller config.model.frames"
    )


def check_constant_clips(cache, groups):
  """Warns of training clips whose frames are all alike; refuses all alike.

  Silence, or any constant signal, gives one log-mel frame throughout: a
  model learns nothing from such a clip, and from a group of nothing else
  nothing at all. Validation clips count: they are training clips held out.
  """
  for group in groups:
    clips = [*group.train_clips, *group.val_clips]
    constant = [c for c in clips if _all_frames_alike(cache.clip_frames(c))]
    if not constant:
      continue
    example = shown(cache.clips[constant[0]].path)
    if len(constant) == len(clips):
      raise AeasdError(
        f"group {group.name}: all {len(clips)} training clips are silent or"
        f" constant (e.g. {example}), so there is nothing to learn; expected"
        " recordings of the machine running"
      )
    log.warning(
      "group %s: %d of %d training clips are silent or constant (e.g. %s);"
      " its model learns nothing useful from them",
      group.name,
      len(constant),
      len(clips),
      example,
    )


def _all_frames_alike(frames):
  return bool(np.all(frames == frames[:1]))


def _padded_rows(rows, width=1):
  width = max(width, max(len(r) for r in rows))
  out = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out, np.asarray([len(r) for r in rows], np.int32)


class ClipFrames:
  """The frames of cached clips laid end to end, read only when sliced.

  Rows past the clips read as zeros. Putting it on a mesh whose devices each
  hold a block of rows reads just this process's rows from the memory-mapped
  cache, so no host of a multi-host run loads the whole dataset.
  """

  def __init__(self, cache, clips, num_rows):
    self.cache = cache
    self.directory = cache.directory
    self.clips = np.asarray(clips, np.int64)
    lengths = cache.lengths[self.clips]
    self.ends = np.cumsum(lengths)
    self.shape = (num_rows, cache.frames.shape[1])
    self.dtype = np.dtype(np.float32)

  def __getitem__(self, index):
    """Rows [start, stop) of a slice (or an index tuple led by one)."""
    rows = index[0] if isinstance(index, tuple) else index
    start, stop, step = rows.indices(self.shape[0])
    if step != 1:
      raise ValueError("ClipFrames reads contiguous rows only")
    out = np.zeros((max(stop - start, 0), self.shape[1]), np.float32)
    first = np.searchsorted(self.ends, start, side="right")
    for i in range(first, len(self.clips)):
      clip_start = self.ends[i - 1] if i else 0
      if clip_start >= stop:
        break
      lo, hi = max(start, clip_start), min(stop, self.ends[i])
      out[lo - start : hi - start] = self.cache.clip_frames(self.clips[i])[
        lo - clip_start : hi - clip_start
      ]
    return out

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a fresh array.
    return self[:].astype(dtype or np.float32)


class ClipWaves:
  """The cached waveforms of clips, one row each, read only when sliced.

  Rows past the clips read as zeros; like ClipFrames, so each process of a
  mesh reads only its devices' rows.
  """

  def __init__(self, cache, clips, num_rows):
    self.cache = cache
    self.directory = cache.directory
    self.clips = np.asarray(clips, np.int64)
    self.shape = (num_rows, cache.waves.shape[1])
    self.dtype = np.dtype(np.float32)

  def __getitem__(self, index):
    rows = index[0] if isinstance(index, tuple) else index
    start, stop, step = rows.indices(self.shape[0])
    if step != 1:
      raise ValueError("ClipWaves reads contiguous rows only")
    out = np.zeros((max(stop - start, 0), self.shape[1]), np.float32)
    have = self.clips[start:stop]
    out[: len(have)] = self.cache.waves[have]
    return out

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a fresh array.
    return self[:].astype(dtype or np.float32)


def host_windows(
  cache,
  train_lists,
  val_lists,
  frames_per_window,
  *,
  min_frames=0,
  min_windows=0,
  labels=None,
  waveforms=False,
):
  """Host WindowData for per-group lists of cached clip indices.

  Args:
    cache: the FeatureCache.
    train_lists: one sequence of clip indices per group, for training.
    val_lists: the same for validation.
    frames_per_window: frames per vector.
    min_frames: pad the frame array to at least this many rows, so that
      chunks of a streamed epoch share one compiled program.
    min_windows: pad the training start rows to at least this width.
    labels: clip examples: each cached clip's class ([cache clips] int32).
    waveforms: clip examples: carry each clip's cached waveform too.

  Returns:
    A WindowData of NumPy arrays, but for frames (and waves): a ClipFrames
    (ClipWaves), read when put on the devices.
  """
  lists = [list(clips) for clips in (*train_lists, *val_lists)]
  order = [c for clips in lists for c in clips]
  check_clip_lengths(cache, order, frames_per_window)
  lengths = cache.lengths[order]
  frames = ClipFrames(cache, order, max(min_frames, int(lengths.sum())))
  starts = window_starts(lengths, frames_per_window)
  clip_end = np.concatenate([[0], np.cumsum(lengths - frames_per_window + 1)])
  clip_count = np.concatenate([[0], np.cumsum([len(clips) for clips in lists])])
  rows = [
    starts[clip_end[a] : clip_end[b]]
    for a, b in zip(clip_count[:-1], clip_count[1:])
  ]
  train_starts, train_counts = _padded_rows(
    rows[: len(train_lists)], min_windows
  )
  val_starts, val_counts = _padded_rows(rows[len(train_lists) :])
  clip_labels = clip_waves = None
  if labels is not None:
    # Clips are exactly frames_per_window long: row i holds clip i.
    num_clips = frames.shape[0] // frames_per_window
    clip_labels = np.zeros(num_clips, np.int32)
    clip_labels[: len(order)] = labels[order]
    if waveforms:
      clip_waves = ClipWaves(cache, order, num_clips)
  return WindowData(
    frames,
    train_starts,
    train_counts,
    val_starts,
    val_counts,
    clip_labels,
    clip_waves,
  )


def gather_host_windows(
  cache, groups, frames_per_window, labels=None, waveforms=False
):
  """Host WindowData of every group's training and validation clips."""
  return host_windows(
    cache,
    [g.train_clips for g in groups],
    [g.val_clips for g in groups],
    frames_per_window,
    labels=labels,
    waveforms=waveforms,
  )


def stream_chunks(
  cache,
  groups,
  frames_per_window,
  chunk_clips,
  epoch,
  seed,
  labels=None,
  waveforms=False,
):
  """The training clips of one epoch, as host WindowData chunks.

  Shuffle semantics: every epoch each group's training clips are put in a
  fresh random order and cut into chunks of `chunk_clips` clips; the epoch
  visits the chunks in that order, and the windows inside a chunk are
  shuffled on the device. So a window meets only windows of the same chunk
  in a batch, and the remainder of each chunk smaller than a batch is left
  out of that epoch. All chunks share one shape (one compiled program).

  Yields:
    WindowData with training windows only.
  """
  train_lengths = [cache.lengths[c] for g in groups for c in g.train_clips]
  longest = int(max(train_lengths))
  chunks_of = []
  for g in groups:
    rng = np.random.default_rng([seed, stable_hash(g.name), epoch])
    order = rng.permutation(g.train_clips)
    chunks_of.append(
      [order[i : i + chunk_clips] for i in range(0, len(order), chunk_clips)]
    )
  num_chunks = max(len(chunks) for chunks in chunks_of)
  empty = np.zeros(0, np.int64)
  for c in range(num_chunks):
    lists = [chunks[c] if c < len(chunks) else empty for chunks in chunks_of]
    yield host_windows(
      cache,
      lists,
      [empty] * len(groups),
      frames_per_window,
      min_frames=len(groups) * chunk_clips * longest,
      min_windows=chunk_clips * (longest - frames_per_window + 1),
      labels=labels,
      waveforms=waveforms,
    )


def gather_windows(frames, starts, frames_per_window):
  """[..., frames_per_window, n_mels] windows gathered on the device."""
  return frames[starts[..., None] + jnp.arange(frames_per_window)]


def gather_examples(windows, starts, frames_per_window):
  """A batch of examples: windows, or (clip frames, labels, waveforms).

  Clip examples are whole clips (windows of a clip's length) with their
  classes and, where carried, their waveforms.
  """
  window = gather_windows(windows.frames, starts, frames_per_window)
  if windows.labels is None:
    return window
  clip = starts // frames_per_window
  wave = None if windows.waves is None else windows.waves[clip]
  return window, windows.labels[clip], wave


def split_window(window, interpolate):
  """(input, target) vectors of a window, in the baseline's column order.

  The autoencoders reconstruct the whole window; IDNN predicts the centre
  frame from the others.
  """
  flat = window.reshape(*window.shape[:-2], -1)
  if not interpolate:
    return flat, flat
  centre = window.shape[-2] // 2
  context = jnp.concatenate(
    [window[..., :centre, :], window[..., centre + 1 :, :]], axis=-2
  )
  return context.reshape(*window.shape[:-2], -1), window[..., centre, :]
