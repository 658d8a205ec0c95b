"""Checks of log-mel arguments, each failure naming the argument.

Shared by features.py, which runs them on every call, and config_check.py,
which runs them on config.features (with the "config.features." prefix)
before any clip is read.
"""

import math

import numpy as np

from aeasd_jax.errors import AeasdError

PAD_MODES = ('constant', 'reflect')
NORMS = ('slaney', None)

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


def check_positive_int(name, value):
  _require(_is_int(value) and value > 0, '', name, value, 'a positive integer')


def check_mel_args(
  sample_rate, n_fft, n_mels, fmin, fmax, htk, norm, prefix=''
):
  """The checks mel_filterbank and log_mel share."""
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
    norm is None or (isinstance(norm, str) and norm in NORMS),
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


def check_log_mel_args(
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
  check_mel_args(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm, prefix)
  _check_int_in(
    prefix, 'hop_length', hop_length, 1, n_fft, f' (at most n_fft={n_fft})'
  )
  _require(
    _is_number(power) and power > 0, prefix, 'power', power, 'a positive number'
  )
  _require(
    isinstance(pad_mode, str) and pad_mode in PAD_MODES,
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
