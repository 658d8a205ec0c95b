"""Reading WAV/FLAC clips into mono float32 at the configured sample rate.

Every problem with a file becomes an AeasdError that names the file, so a bad
clip never surfaces as a crash deep inside JAX.
"""

import math
import os
import stat
import struct

import numpy as np
import soundfile

from aeasd_jax.errors import AeasdError

# Sony Wave64 names its chunks by GUID; these are its 'riff' and 'data' ones.
_W64_RIFF = bytes.fromhex("726966662e91cf11a5d628db04c10000")
_W64_DATA = bytes.fromhex("64617461f3acd3118cd100c04f8edb8a")
# A 32-bit size field of all ones means "see the ds64 chunk" in RF64 and
# "unknown, read to the end" in a RIFF written by a streaming encoder.
_SIZE_NOT_IN_HEADER = 0xFFFFFFFF


def read_audio(
  path,
  *,
  sample_rate=16000,
  resample=False,
  min_samples=1,
  channel="mean",
  rate_advice="set config.data.resample=True to resample it",
):
  """Returns the clip at `path` as a 1-D float32 array at `sample_rate`.

  Multi-channel audio is averaged to mono, as librosa.load(mono=True) does for
  the DCASE baseline, or one channel is taken (DCASE 2026's baseline takes
  channel 0 of its near and far microphones). A clip at another rate is
  resampled with scipy.signal.resample_poly when `resample` is true, and
  refused otherwise.

  Args:
    path: a file soundfile can read (WAV or FLAC; PCM 8/16/24/32-bit or float).
    sample_rate: the rate the features expect, a whole number of Hz.
    resample: resample other rates instead of refusing them.
    min_samples: the shortest clip accepted, normally n_fft.
    channel: "mean", or the index of the channel to keep (config.data.channel).
    rate_advice: what the error for another sample rate tells the user to
      do; the default is train.py's.

  Raises:
    AeasdError: the file is missing, a dangling link, not a regular file,
      unreadable, empty, truncated, not audio, at another sample rate (with
      resample off), too short, lacks the channel asked for, or holds NaN or
      Inf.
  """
  path = os.fspath(path)
  _check_complete(path)
  try:
    with soundfile.SoundFile(path) as f:
      file_rate, declared = f.samplerate, f.frames
      samples = f.read(dtype="float32", always_2d=True)
  except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
    raise AeasdError(
      f"{path}: not a readable WAV/FLAC file ({e}); expected 8- to 32-bit"
      " PCM or float audio"
    ) from None
  if samples.shape[0] == 0:
    raise AeasdError(
      f"{path}: the file holds no samples; expected a clip of"
      f" at least {min_samples} samples"
    )
  # libsndfile 1.2 reports a cut FLAC itself, but a decoder that stops early
  # without an error must not pass a short clip off as a whole one.
  if samples.shape[0] < declared:
    raise AeasdError(
      f"{path}: truncated: the header declares {declared} frames but only"
      f" {samples.shape[0]} decode; expected a complete audio file"
    )
  if not np.all(np.isfinite(samples)):
    raise AeasdError(
      f"{path}: the audio holds NaN or Inf samples; expected"
      " finite sample values"
    )
  if channel == "mean":
    clip = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
  elif int(channel) < samples.shape[1]:
    clip = samples[:, int(channel)]
  else:
    raise AeasdError(
      f"{path}: {samples.shape[1]} channel(s), so config.data.channel="
      f"{channel} is not among them; expected a channel index below"
      f" {samples.shape[1]} or 'mean'"
    )
  if file_rate != sample_rate:
    if not resample:
      raise AeasdError(
        f"{path}: sample rate {file_rate} Hz, expected {sample_rate} Hz"
        f" ({rate_advice})"
      )
    import scipy.signal  # pylint: disable=g-import-not-at-top  # Slow; rare.

    # int(): resample_poly needs integer factors and a config may hold 16000.0.
    target = int(sample_rate)
    gcd = math.gcd(file_rate, target)
    clip = scipy.signal.resample_poly(
      clip, target // gcd, file_rate // gcd
    ).astype(np.float32)
  if clip.shape[0] < min_samples:
    raise AeasdError(
      f"{path}: {clip.shape[0]} samples, shorter than n_fft={min_samples};"
      " expected a longer clip"
    )
  return np.ascontiguousarray(clip, dtype=np.float32)


def _check_complete(path):
  """Raises AeasdError unless `path` is a whole, readable, non-empty file."""
  # libsndfile reports a missing or unreadable file as "System error", so ask
  # the OS first for a message the user can act on.
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    if isinstance(e, FileNotFoundError) and os.path.islink(path):
      raise AeasdError(
        f"{path}: dangling symbolic link to {os.readlink(path)}; expected a"
        " link to an existing WAV or FLAC file"
      ) from None
    raise AeasdError(f"{path}: cannot open ({e.strerror})") from None
  # Opening a FIFO would block until something writes to it.
  if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
    raise AeasdError(f"{path}: not a regular file; expected a WAV or FLAC file")
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if size == 0:
        raise AeasdError(
          f"{path}: the file is empty; expected a WAV or FLAC clip"
        )
      data = _wav_data_chunk(f, size)
  except OSError as e:
    raise AeasdError(f"{path}: cannot open ({e.strerror})") from None
  if data is not None and data[0] > data[1]:
    raise AeasdError(
      f"{path}: truncated: the data chunk declares {data[0]} bytes but the"
      f" file holds {data[1]}; expected a complete WAV file"
    )


def _wav_data_chunk(f, file_size):
  """(bytes the data chunk declares, bytes the file holds after its header).

  libsndfile silently reads a WAV whose data chunk is cut short, so walk the
  chunk headers to the data chunk and compare its size with the file's.

  Returns:
    None for files that are not WAV (FLAC reports truncation itself), for
    chunk headers this walk cannot follow (libsndfile then judges the file),
    and for streamed WAVs whose data size is unknown.
  """
  head = f.read(40)
  if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
    id_size, size_format, counts_header, align, start = 4, "<I", 0, 2, 12
  elif head[:4] == b"RIFX" and head[8:12] == b"WAVE":
    id_size, size_format, counts_header, align, start = 4, ">I", 0, 2, 12
  elif head[:16] == _W64_RIFF:
    id_size, size_format, counts_header, align, start = 16, "<Q", 24, 8, 40
  else:
    return None
  header_size = id_size + struct.calcsize(size_format)
  ds64_data_size = None
  position = start
  while True:
    f.seek(position)
    header = f.read(header_size)
    if len(header) < header_size:
      return None
    chunk_id = header[:id_size]
    (size,) = struct.unpack(size_format, header[id_size:])
    size -= counts_header
    if chunk_id in (b"data", _W64_DATA):
      if id_size == 4 and size == _SIZE_NOT_IN_HEADER:
        if ds64_data_size is None:
          return None
        size = ds64_data_size
      return size, file_size - (position + header_size)
    if size < 0:
      return None
    if chunk_id == b"ds64" and size >= 16:
      # RF64's 64-bit sizes: the whole file's, then the data chunk's.
      sizes = f.read(16)
      if len(sizes) < 16:
        return None
      ds64_data_size = struct.unpack("<QQ", sizes)[1]
    # A chunk of odd size is followed by a pad byte (8-byte alignment in W64).
    position += header_size + size + (-size % align)
