"""Log-mel features and frame stacking for the autoencoder anomaly detectors.

Reproduces the DCASE 2020 Task 2 baseline's librosa features in jax.numpy.
"""

import functools
import inspect
import math
import sys

import jax.numpy as jnp
import numpy as np

from aeasd_jax.errors import AeasdError

# The baseline adds Python's float epsilon before the log, not a float32 one.
_DCASE_EPS = sys.float_info.epsilon
_PAD_MODES = ('constant', 'reflect')
_NORMS = ('slaney', None)

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


# Keeps a typo such as n_fft=10**7 from allocating hundreds of GiB before it
# fails; 65536 (4 s at 16 kHz) is far beyond any useful analysis window.
MAX_N_FFT = 65536


def _require(ok, prefix, name, value, expected):
  if not ok:
    raise AeasdError(f'{prefix}{name}={value!r}: expected {expected}')


def _is_int(value):
  return isinstance(value, (int, np.integer)) and not isinstance(
    value, (bool, np.bool_)
  )


def _is_number(value):
  return (
    not isinstance(value, (bool, np.bool_))
    and isinstance(value, (int, float, np.integer, np.floating))
    and -math.inf < value < math.inf
  )


def _check_int_in(prefix, name, value, low, high, why=''):
  _require(
    _is_int(value) and low <= value <= high,
    prefix,
    name,
    value,
    f'an integer in [{low}, {high}]{why}',
  )


def _check_positive_int(name, value):
  _require(_is_int(value) and value > 0, '', name, value, 'a positive integer')


def _check_mel_args(
  sample_rate, n_fft, n_mels, fmin, fmax, htk, norm, prefix=''
):
  """The checks mel_filterbank and log_mel share; see check_params."""
  _require(
    _is_number(sample_rate) and sample_rate > 0 and sample_rate % 1 == 0,
    prefix,
    'sample_rate',
    sample_rate,
    'a positive whole number of Hz',
  )
  _check_int_in(prefix, 'n_fft', n_fft, 1, MAX_N_FFT)
  bins = n_fft // 2 + 1
  _check_int_in(
    prefix,
    'n_mels',
    n_mels,
    1,
    bins,
    f' (n_fft // 2 + 1 frequency bins for n_fft={n_fft})',
  )
  _require(
    isinstance(htk, (bool, np.bool_)), prefix, 'htk', htk, 'True or False'
  )
  _require(
    norm is None or (isinstance(norm, str) and norm in _NORMS),
    prefix,
    'norm',
    norm,
    "'slaney' or None",
  )
  nyquist = sample_rate / 2
  _require(
    _is_number(fmin) and 0 <= fmin < nyquist,
    prefix,
    'fmin',
    fmin,
    f'a number of Hz in [0, {nyquist:g}) (below sample_rate / 2)',
  )
  _require(
    fmax is None or (_is_number(fmax) and fmin < fmax <= nyquist),
    prefix,
    'fmax',
    fmax,
    f'None or a number of Hz in ({fmin:g}, {nyquist:g}] (above fmin,'
    ' at most sample_rate / 2)',
  )


def _check_log_mel_args(
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
  prefix='',
):
  _check_mel_args(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm, prefix)
  _check_int_in(
    prefix, 'hop_length', hop_length, 1, n_fft, f' (at most n_fft={n_fft})'
  )
  _require(
    _is_number(power) and power > 0, prefix, 'power', power, 'a positive number'
  )
  _require(
    isinstance(pad_mode, str) and pad_mode in _PAD_MODES,
    prefix,
    'pad_mode',
    pad_mode,
    "'constant' or 'reflect'",
  )
  _require(
    log_floor is None or (_is_number(log_floor) and log_floor > 0),
    prefix,
    'log_floor',
    log_floor,
    'None or a positive number',
  )


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
  _check_log_mel_args(**arguments, prefix=prefix)


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
  _check_mel_args(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm)
  if fmax is None:
    fmax = sample_rate / 2
  fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
  # n_mels + 2 edges: band i rises from edge i, peaks at i+1, ends at i+2.
  edges_hz = _mel_to_hz(
    np.linspace(_hz_to_mel(fmin, htk), _hz_to_mel(fmax, htk), n_mels + 2), htk
  )
  widths = np.diff(edges_hz)
  offsets = edges_hz[:, None] - fft_hz[None, :]
  rising = -offsets[:-2] / widths[:-1, None]
  falling = offsets[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  if norm == 'slaney':
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
  return weights.astype(np.float32)


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
  _check_log_mel_args(
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
  filterbank = _cached_filterbank(
    sample_rate, n_fft, n_mels, fmin, fmax, htk, norm
  )

  y = jnp.asarray(y, dtype=jnp.float32)
  if y.ndim < 1:
    raise AeasdError(f'y must have a samples axis, got shape {y.shape}.')
  n_samples = y.shape[-1]
  pad = n_fft // 2
  # torch's reflect padding needs pad < length, so shorter clips have no
  # torchaudio result to match.
  min_samples = pad + 1 if pad_mode == 'reflect' else 1
  if n_samples < min_samples:
    raise AeasdError(
      f'y must have at least {min_samples} samples for n_fft={n_fft} and '
      f"pad_mode='{pad_mode}', got {n_samples}."
    )

  padded = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(pad, pad)], mode=pad_mode)
  n_frames = 1 + (n_samples + 2 * pad - n_fft) // hop_length
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
  _check_positive_int('frames', frames)
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
