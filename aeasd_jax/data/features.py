"""Log-mel features and frame stacking for the autoencoder anomaly detectors.

Reproduces the DCASE 2020 Task 2 baseline's librosa features in jax.numpy.
"""

import functools
import inspect
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from aeasd_jax.data import feature_checks
from aeasd_jax.errors import AeasdError

# The baseline adds Python's float epsilon before the log, not a float32 one.
_DCASE_EPS = sys.float_info.epsilon
# Significant binary digits of ClipLogMel's frame-count buckets.
_BUCKET_BITS = 3

# Slaney's mel scale is linear below 1 kHz and logarithmic above it.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz, htk):
  hz = np.asarray(hz, dtype=np.float64)
  if htk:
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  linear = hz / _SLANEY_HZ_PER_MEL
  # np.maximum keeps log() finite on the linear branch that where() discards.
  log = (
    _SLANEY_BREAK_MEL
    + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ)
    / _SLANEY_LOG_STEP
  )
  return np.where(hz >= _SLANEY_BREAK_HZ, log, linear)


def _mel_to_hz(mel, htk):
  mel = np.asarray(mel, dtype=np.float64)
  if htk:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  linear = mel * _SLANEY_HZ_PER_MEL
  log = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
  return np.where(mel >= _SLANEY_BREAK_MEL, log, linear)


def check_params(params, prefix=''):
  """Raises AeasdError unless `params` are valid log_mel keyword arguments.

  The same checks log_mel runs, for config_check to run on config.features
  before any clip is read.

  Args:
    params: a mapping of log_mel's arguments other than `y`; a missing one
      takes log_mel's default.
    prefix: what to put before each argument's name in a message, such as
      'config.features.'.
  """
  signature = inspect.signature(log_mel)
  names = [n for n in signature.parameters if n != 'y']
  unknown = sorted(set(params) - set(names))
  if unknown:
    raise AeasdError(
      f'{prefix}{unknown[0]}: not a log-mel setting; expected only {names}'
    )
  arguments = {n: signature.parameters[n].default for n in names}
  arguments.update(params)
  feature_checks.check_log_mel_args(**arguments, prefix=prefix)


def mel_filterbank(
  sample_rate, n_fft, n_mels, fmin=0.0, fmax=None, htk=False, norm='slaney'
):
  """Triangular mel filters, matching `librosa.filters.mel`.

  Args:
    sample_rate: Audio sample rate in Hz.
    n_fft: FFT length; the filters cover its 1 + n_fft // 2 rfft bins.
    n_mels: Number of mel bands.
    fmin: Lowest band edge in Hz.
    fmax: Highest band edge in Hz; None means sample_rate / 2.
    htk: Use the HTK mel formula instead of Slaney's.
    norm: 'slaney' scales each triangle to unit area per Hz (so bands of
      different width see equal energy from white noise); None leaves
      triangles with unit peak.

  Returns:
    float32 array [n_mels, 1 + n_fft // 2].

  Raises:
    AeasdError: if an argument is out of range.
  """
  feature_checks.check_mel_args(
    sample_rate, n_fft, n_mels, fmin, fmax, htk, norm
  )
  fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
  edges_hz = _band_edges(sample_rate, n_mels, fmin, fmax, htk)
  widths = np.diff(edges_hz)
  offsets = edges_hz[:, None] - fft_hz[None, :]
  rising = -offsets[:-2] / widths[:-1, None]
  falling = offsets[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  if norm == 'slaney':
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
  return weights.astype(np.float32)


def _band_edges(sample_rate, n_mels, fmin, fmax, htk):
  """The n_mels + 2 band edges in Hz.

  Band i rises from edge i, peaks at edge i+1 and ends at edge i+2.
  """
  if fmax is None:
    fmax = sample_rate / 2
  return _mel_to_hz(
    np.linspace(_hz_to_mel(fmin, htk), _hz_to_mel(fmax, htk), n_mels + 2), htk
  )


def mel_band_ranges(sample_rate, n_mels, fmin=0.0, fmax=None, htk=False):
  """[n_mels, 2]: each mel band's lowest and highest frequency in Hz.

  The feet of its triangle in mel_filterbank, so neighbouring ranges
  overlap by half a band.
  """
  edges = _band_edges(sample_rate, n_mels, fmin, fmax, htk)
  return np.stack([edges[:-2], edges[2:]], axis=1)


@functools.lru_cache(maxsize=None)
def _cached_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm):
  # Read-only because every caller shares this one array.
  weights = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm)
  weights.setflags(write=False)
  return weights


@functools.lru_cache(maxsize=None)
def _cached_hann(n_fft):
  # Periodic (DFT-even) Hann, as scipy.signal.get_window('hann', n) gives.
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
  window = window.astype(np.float32)
  window.setflags(write=False)
  return window


@functools.lru_cache(maxsize=None)
def _cached_frame_index(n_frames, n_fft, hop_length):
  index = (
    np.arange(n_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
  ).astype(np.int32)
  index.setflags(write=False)
  return index


def log_mel(
  y,
  sample_rate=16000,
  n_fft=1024,
  hop_length=512,
  n_mels=128,
  power=2.0,
  *,
  htk=False,
  norm='slaney',
  pad_mode='constant',
  log_floor=None,
  fmin=0.0,
  fmax=None,
):
  """Log-mel spectrogram of waveforms, batched over leading axes.

  The defaults reproduce the DCASE 2020 baseline: librosa's centred STFT
  with a periodic Hann window, Slaney mel filters and
  `20 / power * log10(mel + sys.float_info.epsilon)`.

  AE-ASD's torchaudio features are `htk=True, norm=None, pad_mode='reflect',
  log_floor=1e-10`: with a floor the log becomes
  `20 / power * log10(maximum(mel, log_floor))`, which for power=2 is
  torchaudio's `10 * log10(max(mel, 1e-10))`.

  Every argument except `y` is a plain Python value used at trace time, so
  under `jax.jit` pass them as static arguments (or bind them with
  functools.partial).

  Args:
    y: Float waveform [..., samples], nominally in [-1, 1].
    sample_rate: Sample rate in Hz.
    n_fft: Frame and FFT length.
    hop_length: Samples between frame starts.
    n_mels: Number of mel bands.
    power: Exponent of the magnitude spectrum (2 for power).
    htk: Use the HTK mel formula instead of Slaney's.
    norm: Mel filter normalisation, 'slaney' or None.
    pad_mode: How frames are centred: 'constant' pads n_fft // 2 zeros on
      each side (librosa >= 0.10); 'reflect' mirrors the signal (librosa <
      0.10 and torchaudio).
    log_floor: None for the baseline's additive epsilon; a positive number
      clamps mel energies from below before the log instead.
    fmin: Lowest mel band edge in Hz.
    fmax: Highest mel band edge in Hz; None means sample_rate / 2.

  Returns:
    float32 array [..., frames, n_mels], with
    frames = 1 + samples // hop_length for even n_fft.

  Raises:
    AeasdError: if an argument is out of range or `y` is too short.
  """
  # Checked before the cached lookup so unhashable values get an AeasdError.
  feature_checks.check_log_mel_args(
    sample_rate,
    n_fft,
    hop_length,
    n_mels,
    power,
    htk,
    norm,
    pad_mode,
    log_floor,
    fmin,
    fmax,
  )
  y = jnp.asarray(y, dtype=jnp.float32)
  if y.ndim < 1:
    raise AeasdError(f'y must have a samples axis, got shape {y.shape}.')
  _check_samples(y.shape[-1], n_fft, pad_mode)
  pad = n_fft // 2
  padded = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(pad, pad)], mode=pad_mode)
  return _log_mel_of_padded(
    padded,
    sample_rate,
    n_fft,
    hop_length,
    n_mels,
    power,
    htk,
    norm,
    log_floor,
    fmin,
    fmax,
  )


def _check_samples(n_samples, n_fft, pad_mode):
  # torch's reflect padding needs pad < length, so shorter clips have no
  # torchaudio result to match.
  min_samples = n_fft // 2 + 1 if pad_mode == 'reflect' else 1
  if n_samples < min_samples:
    raise AeasdError(
      f'y must have at least {min_samples} samples for n_fft={n_fft} and '
      f"pad_mode='{pad_mode}', got {n_samples}."
    )


def _log_mel_of_padded(
  padded,
  sample_rate,
  n_fft,
  hop_length,
  n_mels,
  power,
  htk,
  norm,
  log_floor,
  fmin,
  fmax,
):
  """log_mel after its centre padding: frame i starts at padded[i * hop]."""
  filterbank = _cached_filterbank(
    sample_rate, n_fft, n_mels, fmin, fmax, htk, norm
  )
  n_frames = 1 + (padded.shape[-1] - n_fft) // hop_length
  frames = padded[..., _cached_frame_index(n_frames, n_fft, hop_length)]
  spectrum = jnp.fft.rfft(frames * _cached_hann(n_fft), axis=-1)
  energy = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  if power != 2:
    energy = energy ** (power / 2)
  # HIGHEST stops GPUs using TF32, whose ~1e-3 relative error (~0.005 dB)
  # would eat a tenth of the tolerance against librosa.
  mel = jnp.matmul(energy, filterbank.T, precision='highest')
  if log_floor is None:
    mel = mel + _DCASE_EPS
  else:
    mel = jnp.maximum(mel, log_floor)
  return (20.0 / power) * jnp.log10(mel)


def bucket_frames(n_frames):
  """The frame count a clip of `n_frames` frames is computed at by ClipLogMel.

  n_frames rounded up to three significant binary digits (4, 5, 6, 7 times a
  power of two): at most 25% more frames than the clip has, and at most four
  programs per doubling of clip length. Powers of two alone would compile
  fewer programs but cost up to twice the work: a 10 s DCASE clip's 313
  frames would be computed as 512 instead of 320.
  """
  shift = max(0, int(n_frames).bit_length() - _BUCKET_BITS)
  return -(-int(n_frames) >> shift) << shift


class ClipLogMel:
  """log_mel of clips of any length, compiled once per bucket of lengths.

  jax.jit compiles a program for every input shape, so calling log_mel on
  clips of 40 lengths compiles it 40 times. Here each clip is centre-padded
  as log_mel pads it, then zero-padded to the length of bucket_frames(its
  frame count) frames, and its frames are cut back to its own count. The
  frames kept read exactly the samples log_mel's frames read (the zeros
  added lie past the end of the last kept frame), so they equal log_mel's
  up to the order XLA sums in for another shape.

  Attributes:
    shapes: the input shapes called so far, one compiled program each.
  """

  def __init__(self, params):
    """`params`: log_mel's keyword arguments (config.features)."""
    check_params(params)
    signature = inspect.signature(log_mel)
    args = {n: p.default for n, p in signature.parameters.items() if n != 'y'}
    args.update(params)
    self._n_fft = args['n_fft']
    self._hop = args['hop_length']
    self._pad_mode = args.pop('pad_mode')
    self._log_mel = jax.jit(lambda padded: _log_mel_of_padded(padded, **args))
    self.shapes = set()

  def frames(self, n_samples):
    """log_mel's frame count for a clip of `n_samples` samples."""
    pad = self._n_fft // 2
    return 1 + (n_samples + 2 * pad - self._n_fft) // self._hop

  def padded_samples(self, n_samples):
    """The length a clip of `n_samples` is computed at; one call, one length."""
    return (bucket_frames(self.frames(n_samples)) - 1) * self._hop + self._n_fft

  def __call__(self, waves, rows=None):
    """Frames of each of `waves` ([samples] arrays of one padded length).

    Args:
      waves: 1-D waveforms whose padded_samples are equal.
      rows: compute in a batch of this many rows (at least len(waves)), so
        calls with fewer clips reuse the same program.

    Returns:
      A list of float32 arrays [frames(len(wave)), n_mels].
    """
    length = self.padded_samples(len(waves[0]))
    if rows is not None and rows < len(waves):
      raise AeasdError(f'ClipLogMel: rows={rows}; expected >= {len(waves)}')
    batch = np.zeros((rows or len(waves), length), np.float32)
    pad = self._n_fft // 2
    for row, wave in zip(batch, waves):
      wave = np.asarray(wave, np.float32)
      if wave.ndim != 1 or self.padded_samples(len(wave)) != length:
        raise AeasdError(
          f'ClipLogMel: a wave of shape {wave.shape} in a call for padded'
          f' length {length}; expected 1-D waves of one padded length'
        )
      _check_samples(len(wave), self._n_fft, self._pad_mode)
      # The samples after the last kept frame's end are never read.
      centred = np.pad(wave, pad, mode=self._pad_mode)[:length]
      row[: len(centred)] = centred
    self.shapes.add(batch.shape)
    mels = np.asarray(self._log_mel(batch))
    return [mel[: self.frames(len(w))] for mel, w in zip(mels, waves)]


def stack_frames(logmel, frames=5):
  """Concatenates each run of `frames` consecutive frames into one vector.

  Row i of the result is concat(logmel[i], ..., logmel[i + frames - 1]), so
  frame offset t occupies columns [t * n_mels, (t + 1) * n_mels), as in the
  DCASE baseline.

  Args:
    logmel: Array [..., T, n_mels].
    frames: Number of consecutive frames per vector.

  Returns:
    Array [..., T - frames + 1, frames * n_mels].

  Raises:
    AeasdError: if `frames` is not a positive integer or T < frames.
  """
  feature_checks.check_positive_int('frames', frames)
  logmel = jnp.asarray(logmel)
  if logmel.ndim < 2:
    raise AeasdError(
      f'logmel must have shape [..., T, n_mels], got {logmel.shape}.'
    )
  n_time, n_mels = logmel.shape[-2:]
  if n_time < frames:
    raise AeasdError(
      f'Cannot stack {frames} frames from a clip of only {n_time} frames; '
      f'the clip must have at least frames={frames} frames.'
    )
  n_vectors = n_time - frames + 1
  index = np.arange(n_vectors)[:, None] + np.arange(frames)[None, :]
  stacked = logmel[..., index, :]
  return stacked.reshape(*logmel.shape[:-2], n_vectors, frames * n_mels)
