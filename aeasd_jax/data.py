"""Training data on the device: one frame array and each group's window starts.

Frames are stored once; the 5-frame vectors are gathered on the device, so
nothing is copied five times on the host.
"""

import dataclasses
import hashlib
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from aeasd_jax.errors import AeasdError


@dataclasses.dataclass(frozen=True)
class Group:
  """The clips one model (times seeds) trains on, and those it is tested on."""
  name: str  # "fan", or "fan/id_00" with group_by="type_id".
  train_clips: np.ndarray  # Cache clip indices used for gradient steps.
  val_clips: np.ndarray  # Normal training clips held out for validation.
  test_clips: np.ndarray  # Dev and eval test clips of this group.


def stable_hash(text):
  """A 31-bit hash of a string that does not change between runs."""
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


def make_groups(clips, *, group_by, use_eval_train, validation_split, seed):
  """Splits cached clips into per-group train, validation and test sets.

  Args:
    clips: the cache's dcase.Clip tuple; indices refer to it.
    group_by: "type" (one model per machine type, as the baseline) or
      "type_id" (one per machine type and id).
    use_eval_train: also train on eval_data/*/train (DCASE's additional
      training data).
    validation_split: fraction of each group's training clips held out.
    seed: fixes which clips are held out.

  Returns:
    Groups sorted by name.
  """
  def group_name(clip):
    if group_by == "type":
      return clip.machine_type
    return f"{clip.machine_type}/{clip.machine_id}"

  train, test = {}, {}
  for i, clip in enumerate(clips):
    if clip.split == "test":
      test.setdefault(group_name(clip), []).append(i)
    elif clip.section == "dev" or use_eval_train:
      train.setdefault(group_name(clip), []).append(i)
  groups = []
  for name in sorted(train):
    indices = np.asarray(train[name], np.int64)
    rng = np.random.default_rng([seed, stable_hash(name)])
    shuffled = rng.permutation(indices)
    num_val = int(round(validation_split * len(indices)))
    if validation_split > 0 and len(indices) > 1:
      num_val = min(max(num_val, 1), len(indices) - 1)
    groups.append(Group(name, np.sort(shuffled[num_val:]),
                        np.sort(shuffled[:num_val]),
                        np.asarray(test.get(name, []), np.int64)))
  if not groups:
    raise AeasdError("no training clips found; expected <type>/train/*.wav"
                     " under config.data.root")
  return groups


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


def window_starts(lengths, frames_per_window):
  """First-frame offsets of every window of clips laid end to end."""
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  return np.concatenate(
      [o + np.arange(max(n - frames_per_window + 1, 0))
       for o, n in zip(offsets, lengths)] or [np.zeros(0, np.int64)])


def _padded_rows(rows):
  width = max(1, max(len(r) for r in rows))
  out = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out, np.asarray([len(r) for r in rows], np.int32)


def gather_host_windows(cache, groups, frames_per_window):
  """Host arrays for WindowData: the frames of train and val clips, once.

  Returns:
    A WindowData of NumPy arrays, ready for jax.device_put.
  """
  order = [c for g in groups for c in (*g.train_clips, *g.val_clips)]
  lengths = cache.lengths[order]
  if np.any(lengths < frames_per_window):
    short = [cache.clips[c].path for c in order
             if cache.lengths[c] < frames_per_window]
    raise AeasdError(f"{short[0]} (and {len(short) - 1} more): fewer than"
                     f" {frames_per_window} frames; expected longer clips")
  frames = np.concatenate([cache.clip_frames(c) for c in order])
  starts = window_starts(lengths, frames_per_window)
  windows_per_clip = lengths - frames_per_window + 1
  clip_end = np.cumsum(windows_per_clip)
  train_rows, val_rows, clip = [], [], 0
  for g in groups:
    for clips, rows in ((g.train_clips, train_rows), (g.val_clips, val_rows)):
      first = clip_end[clip - 1] if clip else 0
      clip += len(clips)
      last = clip_end[clip - 1] if clip else 0
      rows.append(starts[first:last])
  train_starts, train_counts = _padded_rows(train_rows)
  val_starts, val_counts = _padded_rows(val_rows)
  return WindowData(frames.astype(np.float32), train_starts, train_counts,
                    val_starts, val_counts)


def gather_windows(frames, starts, frames_per_window):
  """[..., frames_per_window, n_mels] windows gathered on the device."""
  return frames[starts[..., None] + jnp.arange(frames_per_window)]


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
      [window[..., :centre, :], window[..., centre + 1:, :]], axis=-2)
  return context.reshape(*window.shape[:-2], -1), window[..., centre, :]
