"""The log-mel feature cache: every clip's frames computed once, memory-mapped.

A cache is one float32 file of all frames of all clips plus a JSON index.
It is built in a temporary folder and renamed into place, so an interrupted
build never leaves a cache that loads.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time

import jax
import numpy as np

from aeasd_jax import audio
from aeasd_jax import dcase
from aeasd_jax import features
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)

FRAMES_FILE = "frames.f32"
INDEX_FILE = "index.json"
BAD_FILES_REPORT = "bad_files.txt"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FeatureCache:
  """Frames of every clip, and where each clip's frames start and end."""

  directory: pathlib.Path
  frames: np.ndarray  # [total_frames, n_mels] float32, memory-mapped.
  clips: tuple  # dcase.Clip, in storage order.
  offsets: np.ndarray  # [num_clips] int64, first frame of each clip.
  lengths: np.ndarray  # [num_clips] int64, frames of each clip.
  bad_files: tuple  # "path: reason" for each file left out.

  def clip_frames(self, i):
    return self.frames[self.offsets[i] : self.offsets[i] + self.lengths[i]]


def cache_key(clips, feature_params, audio_params):
  """A hash of everything the cached frames depend on."""
  digest = hashlib.sha256()
  digest.update(
    json.dumps(
      {
        "version": FORMAT_VERSION,
        "features": feature_params,
        "audio": audio_params,
      },
      sort_keys=True,
    ).encode()
  )
  for clip in clips:
    try:
      stat = os.stat(clip.path)
      version = f"{stat.st_size}\0{stat.st_mtime_ns}"
    except OSError:
      # read_audio reports the file as bad, with the others, while building.
      version = "unreadable"
    digest.update(f"{clip.path}\0{version}\n".encode())
  return digest.hexdigest()[:20]


def build_or_load(
  clips,
  feature_params,
  cache_dir,
  *,
  resample=False,
  skip_bad_files=False,
  num_workers=8,
  batch_size=64,
  batch_seconds=640.0,
  show_progress=True,
):
  """Loads the cache for these clips and settings, building it if needed.

  Args:
    clips: the dcase.Clip list to cache.
    feature_params: keyword arguments of features.log_mel.
    cache_dir: the folder that holds one subfolder per cache key.
    resample: resample clips at another rate instead of refusing them.
    skip_bad_files: leave bad files out (listed in a report) instead of
      stopping with the list of them.
    num_workers: threads decoding audio files.
    batch_size: the most clips per log-mel call on the device.
    batch_seconds: the most audio seconds per log-mel call, which bounds its
      memory; a clip longer than this goes in a call of its own.
    show_progress: print a clips/s progress line while building.

  Returns:
    A FeatureCache.
  """
  if not clips:
    raise AeasdError(
      "no clips to cache; check config.data.root and config.data.machine_types"
    )
  audio_params = {"resample": bool(resample)}
  key = cache_key(clips, feature_params, audio_params)
  directory = pathlib.Path(cache_dir) / key
  if not directory.is_dir():
    _build(
      directory,
      clips,
      feature_params,
      resample,
      skip_bad_files,
      num_workers,
      batch_size,
      batch_seconds,
      show_progress,
    )
  cache = load(directory)
  if cache.bad_files and not skip_bad_files:
    # The cache was built with skip_bad_files=True; this run asked to stop.
    raise _bad_files_error(cache.bad_files)
  if cache.bad_files:
    log.warning(
      "%d bad file(s) were left out of the feature cache; see %s",
      len(cache.bad_files),
      directory / BAD_FILES_REPORT,
    )
  return cache


def load(directory):
  """Opens a built cache, checking that its index and frames agree."""
  directory = pathlib.Path(directory)
  try:
    with open(directory / INDEX_FILE) as f:
      index = json.load(f)
  except (OSError, ValueError) as e:
    raise AeasdError(
      f"feature cache {directory}: unreadable index ({e});"
      " delete the folder to rebuild it"
    ) from None
  body = {k: v for k, v in index.items() if k != "checksum"}
  if index.get("checksum") != _checksum(body):
    raise AeasdError(
      f"feature cache {directory}: index checksum mismatch;"
      " delete the folder to rebuild it"
    )
  if body["key"] != directory.name:
    raise AeasdError(
      f"feature cache {directory}: index is for key"
      f" {body['key']}; delete the folder to rebuild it"
    )
  lengths = np.asarray(body["lengths"], np.int64)
  n_mels = body["n_mels"]
  total = int(lengths.sum())
  frames_path = directory / FRAMES_FILE
  expected_bytes = total * n_mels * 4
  if not frames_path.is_file() or frames_path.stat().st_size != expected_bytes:
    raise AeasdError(
      f"feature cache {frames_path}: expected {expected_bytes}"
      " bytes; delete the folder to rebuild it"
    )
  frames = (
    np.memmap(frames_path, np.float32, "r", shape=(total, n_mels))
    if total
    else np.zeros((0, n_mels), np.float32)
  )
  # Not concatenate([0], ...): that gives one offset for zero clips.
  offsets = np.cumsum(lengths) - lengths
  clips = tuple(dcase.Clip(**c) for c in body["clips"])
  return FeatureCache(
    directory, frames, clips, offsets, lengths, tuple(body["bad_files"])
  )


def _bad_files_error(bad):
  listing = "\n  ".join(bad)
  return AeasdError(
    f"{len(bad)} bad audio file(s); fix or remove them, or set"
    f" config.data.skip_bad_files=True to leave them out:\n  {listing}"
  )


def _checksum(body):
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _build(
  directory,
  clips,
  feature_params,
  resample,
  skip_bad_files,
  num_workers,
  batch_size,
  batch_seconds,
  show_progress,
):
  """Computes all frames into a temporary folder, then renames it."""
  directory.parent.mkdir(parents=True, exist_ok=True)
  _remove_abandoned_builds(directory)
  tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    kept, lengths, bad = _compute_frames(
      tmp / FRAMES_FILE,
      clips,
      feature_params,
      resample,
      num_workers,
      batch_size,
      batch_seconds,
      show_progress,
    )
    if bad and not skip_bad_files:
      raise _bad_files_error(bad)
    if bad:
      (tmp / BAD_FILES_REPORT).write_text("\n".join(bad) + "\n")
    body = {
      "key": directory.name,
      "version": FORMAT_VERSION,
      "n_mels": feature_params["n_mels"],
      "features": feature_params,
      "clips": [dataclasses.asdict(c) for c in kept],
      "lengths": lengths,
      "bad_files": bad,
    }
    with open(tmp / INDEX_FILE, "w") as f:
      json.dump({**body, "checksum": _checksum(body)}, f)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.replace(tmp, directory)
    except OSError:
      # Another process finished the same cache first; theirs is identical.
      if not directory.is_dir():
        raise
  except OSError as e:
    raise AeasdError(
      f"cannot write the feature cache under {directory.parent}"
      f" ({e.strerror or e}); expected a writable folder with"
      " free space (config.data.cache_dir)"
    ) from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned_builds(directory):
  """Deletes temporary folders of builds whose process was killed."""
  for tmp in directory.parent.glob(f".tmp-{directory.name}-*"):
    try:
      os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
    except ProcessLookupError:
      shutil.rmtree(tmp, ignore_errors=True)
    except (ValueError, PermissionError):
      pass  # Not ours to judge: a foreign name or another user's process.


def _compute_frames(
  frames_path,
  clips,
  feature_params,
  resample,
  num_workers,
  batch_size,
  batch_seconds,
  show_progress,
):
  """Decodes clips on threads and runs log-mel in batches on the device."""
  log_mel = jax.jit(lambda y: features.log_mel(y, **feature_params))
  decode = lambda clip: _decode(clip, feature_params, resample)
  budget = batch_seconds * feature_params["sample_rate"]
  kept, lengths, bad, pending = [], [], [], []
  start = time.perf_counter()

  def clips_per_call(samples):
    # One 10-minute clip among 10-second ones must not be padded to
    # batch_size copies of itself.
    return min(batch_size, max(1, int(budget // samples)))

  def flush(out):
    # One program per clip length: pad every call to the same clip count.
    waves = np.stack([w for _, w in pending])
    padded = np.zeros(
      (clips_per_call(waves.shape[1]), waves.shape[1]), np.float32
    )
    padded[: len(waves)] = waves
    mels = np.asarray(log_mel(padded))[: len(waves)]
    for (clip, _), mel in zip(pending, mels):
      out.write(np.ascontiguousarray(mel, np.float32).tobytes())
      kept.append(clip)
      lengths.append(int(mel.shape[0]))
    pending.clear()

  with (
    open(frames_path, "wb") as out,
    concurrent.futures.ThreadPoolExecutor(num_workers) as pool,
    _ProgressLine(show_progress) as progress,
  ):
    decoded = _in_order(pool, decode, clips, window=4 * num_workers)
    for done, (clip, result) in enumerate(decoded, 1):
      if isinstance(result, AeasdError):
        bad.append(str(result))
      else:
        if pending and (
          len(pending) == clips_per_call(pending[0][1].shape[0])
          or pending[0][1].shape != result.shape
        ):
          flush(out)
        pending.append((clip, result))
      if done % 50 == 0 or done == len(clips):
        rate = done / (time.perf_counter() - start)
        progress.show(
          f"feature cache: {done}/{len(clips)} clips, {rate:.0f} clips/s"
        )
    if pending:
      flush(out)
    out.flush()
    os.fsync(out.fileno())
  return kept, lengths, bad


class _ProgressLine:
  """A stderr line rewritten in place, ended however the work stops.

  Without the newline on the way out, an error raised mid-build would be
  printed on the end of the progress line.
  """

  def __init__(self, enabled):
    self._enabled = enabled
    self._shown = False

  def show(self, text):
    if self._enabled:
      sys.stderr.write(f"\r{text}")
      sys.stderr.flush()
      self._shown = True

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if self._shown:
      sys.stderr.write("\n")
      sys.stderr.flush()


def _in_order(pool, fn, items, window):
  """Yields (item, fn(item)) in order with at most `window` calls in flight.

  Unlike pool.map, it does not decode the whole dataset into memory ahead of
  the device.
  """
  in_flight = collections.deque()
  for item in items:
    in_flight.append((item, pool.submit(fn, item)))
    if len(in_flight) >= window:
      head, future = in_flight.popleft()
      yield head, future.result()
  for head, future in in_flight:
    yield head, future.result()


def _decode(clip, feature_params, resample):
  try:
    return audio.read_audio(
      clip.path,
      sample_rate=feature_params["sample_rate"],
      resample=resample,
      min_samples=feature_params["n_fft"],
    )
  except AeasdError as e:
    return e
