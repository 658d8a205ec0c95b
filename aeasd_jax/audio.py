"""Reading WAV/FLAC clips into mono float32 at the configured sample rate.

Every problem with a file becomes an AeasdError that names the file, so a bad
clip never surfaces as a crash deep inside JAX.
"""

import math
import os

import numpy as np
import soundfile

from aeasd_jax.errors import AeasdError


def read_audio(path, *, sample_rate=16000, resample=False, min_samples=1):
  """Returns the clip at `path` as a 1-D float32 array at `sample_rate`.

  Multi-channel audio is averaged to mono, as librosa.load(mono=True) does for
  the DCASE baseline. A clip at another rate is resampled with
  scipy.signal.resample_poly when `resample` is true, and refused otherwise.

  Args:
    path: a file soundfile can read (WAV or FLAC; PCM 8/16/24/32-bit or float).
    sample_rate: the rate the features expect.
    resample: resample other rates instead of refusing them.
    min_samples: the shortest clip accepted, normally n_fft.

  Raises:
    AeasdError: the file is missing, unreadable, empty, not audio, at another
      sample rate (with resample off), too short, or holds NaN or Inf.
  """
  path = os.fspath(path)
  # libsndfile reports a missing or unreadable file as "System error", so ask
  # the OS first for a message the user can act on.
  try:
    with open(path, "rb"):
      pass
  except OSError as e:
    raise AeasdError(f"{path}: cannot open ({e.strerror})") from None
  if os.path.getsize(path) == 0:
    raise AeasdError(f"{path}: the file is empty; expected a WAV or FLAC clip")
  try:
    samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
    raise AeasdError(
        f"{path}: not a readable WAV/FLAC file ({e}); expected 8- to 32-bit"
        " PCM or float audio") from None
  if samples.shape[0] == 0:
    raise AeasdError(f"{path}: the file holds no samples; expected a clip of"
                     f" at least {min_samples} samples")
  if not np.all(np.isfinite(samples)):
    raise AeasdError(f"{path}: the audio holds NaN or Inf samples; expected"
                     " finite sample values")
  clip = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
  if file_rate != sample_rate:
    if not resample:
      raise AeasdError(
          f"{path}: sample rate {file_rate} Hz, expected {sample_rate} Hz (set"
          " config.data.resample=True to resample it)")
    import scipy.signal  # pylint: disable=g-import-not-at-top  # Slow; rare.
    gcd = math.gcd(file_rate, sample_rate)
    clip = scipy.signal.resample_poly(
        clip, sample_rate // gcd, file_rate // gcd).astype(np.float32)
  if clip.shape[0] < min_samples:
    raise AeasdError(
        f"{path}: {clip.shape[0]} samples, shorter than n_fft={min_samples};"
        " expected a longer clip")
  return np.ascontiguousarray(clip, dtype=np.float32)
