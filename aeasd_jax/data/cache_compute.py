"""Decoding clips and computing their log-mel frames, for a cache build.

Threads decode the audio (and digest each file's bytes) while the device
computes log-mel frames in batches of similar length; the frames stream to
one file, in clip order.
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import os
import sys
import time

import numpy as np

from aeasd_jax.data import audio
from aeasd_jax.data import features
from aeasd_jax.errors import AeasdError

_DIGEST_BYTES = 32  # blake2b-256 of each clip's file bytes.


def compute_frames(
  frames_path,
  clips,
  feature_params,
  audio_params,
  num_workers,
  batch_size,
  batch_seconds,
  show_progress,
  clip_samples=None,
  waves_path=None,
):
  """Decodes clips on threads and runs log-mel in batches on the device.

  With clip_samples, each waveform is first tiled (repeated) or cut to that
  many samples, so every clip gives one frame count; with waves_path, those
  waveforms are stored there too, clip after clip.
  """
  log_mel = features.ClipLogMel(feature_params)
  decode = lambda clip: _decode(
    clip, feature_params, audio_params, clip_samples
  )
  budget = batch_seconds * feature_params["sample_rate"]
  kept, lengths, digests, bad, pending = [], [], [], [], []
  start = time.perf_counter()

  def clips_per_call(samples):
    # One 10-minute clip among 10-second ones must not be padded to
    # batch_size copies of itself.
    return min(batch_size, max(1, int(budget // samples)))

  def flush(out):
    # One program per length bucket: every call of a bucket has as many rows.
    length = log_mel.padded_samples(len(pending[0][1]))
    mels = log_mel([w for _, w, _ in pending], rows=clips_per_call(length))
    for (clip, wave, digest), mel in zip(pending, mels):
      out.write(np.ascontiguousarray(mel, np.float32).tobytes())
      if waves_out is not None:
        waves_out.write(np.ascontiguousarray(wave, np.float32).tobytes())
      kept.append(clip)
      lengths.append(int(mel.shape[0]))
      digests.append(digest)
    pending.clear()

  with (
    open(frames_path, "wb") as out,
    open(waves_path, "wb")
    if waves_path
    else contextlib.nullcontext() as waves_out,
    concurrent.futures.ThreadPoolExecutor(num_workers) as pool,
    _ProgressLine(show_progress) as progress,
  ):
    decoded = _in_order(pool, decode, clips, window=4 * num_workers)
    for done, (clip, result) in enumerate(decoded, 1):
      if isinstance(result, AeasdError):
        bad.append(str(result))
      else:
        wave, digest = result
        if pending:
          length = log_mel.padded_samples(len(pending[0][1]))
          full = len(pending) == clips_per_call(length)
          if full or log_mel.padded_samples(len(wave)) != length:
            flush(out)
        pending.append((clip, wave, digest))
      if done % 50 == 0 or done == len(clips):
        rate = done / (time.perf_counter() - start)
        progress.show(
          f"feature cache: {done}/{len(clips)} clips, {rate:.0f} clips/s"
        )
    if pending:
      flush(out)
    for f in (out, waves_out):
      if f is not None:
        f.flush()
        os.fsync(f.fileno())
  return kept, lengths, digests, bad


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


def _decode(clip, feature_params, audio_params, clip_samples):
  """(waveform, blake2b hex digest of the file's bytes), or the AeasdError."""
  try:
    wave = audio.read_audio(
      clip.path,
      sample_rate=feature_params["sample_rate"],
      min_samples=feature_params["n_fft"],
      **audio_params,
    )
    if clip_samples:
      wave = fixed_length(wave, clip_samples)
    # Read after decoding, from the page cache; read_audio first turns a
    # missing file or a FIFO into its message. A change in between is
    # caught by _check_unchanged.
    return wave, _file_digest(clip.path)
  except AeasdError as e:
    return e


def fixed_length(wave, samples):
  """The first `samples` of a waveform, a short one tiled (repeated) to it.

  As ASDKit makes every clip of a year one length; a cut keeps the start,
  as STgram-MFN keeps each clip's first 10 s.
  """
  return np.resize(np.asarray(wave, np.float32), samples)


def _file_digest(path):
  digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
  try:
    with open(path, "rb") as f:
      while chunk := f.read(1 << 20):
        digest.update(chunk)
  except OSError as e:
    raise AeasdError(f"{path}: cannot read ({e.strerror or e})") from None
  return digest.hexdigest()
