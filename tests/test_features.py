"""Tests for aeasd_jax.features against librosa as the oracle.

librosa is a test-only dependency; the library itself never imports it.
"""

import functools
import sys

import jax
import librosa
import numpy as np
import pytest
import soundfile

from aeasd_jax.data import features
from aeasd_jax.errors import AeasdError

SR = 16000
N_FFT = 1024
HOP = 512
N_MELS = 128
SIGNALS = ('white_noise', 'chirp', 'quiet_tone', 'pcm16_wav')


def _float32_db_error(dynamic_range_db):
  """Largest dB error of a float32 log-mel bin this far below the loudest.

  To first order an FFT output carries log2(n_fft) roundings, each of at most
  u = 2**-24 of the frame's largest amplitude; a bin dynamic_range_db down is
  10**(dynamic_range_db / 20) times smaller, so its relative error is as much
  larger, its power's twice that, and 10 log10 turns a relative error d into
  10 / ln(10) * d dB. (The mel sums add nonnegative terms: no cancellation.)

  Args:
    dynamic_range_db: how far below the loudest bin the bin lies.
  """
  u = np.finfo(np.float32).eps / 2
  return (
    10 / np.log(10) * 2 * np.log2(N_FFT) * u * 10 ** (dynamic_range_db / 20)
  )


# Bins further below the clip's loudest bin are float32 round-off in any
# implementation, librosa's own float32 path included, so they are not compared.
DYNAMIC_RANGE_DB = 80.0
# Ours in float32 against librosa in float64: 0.052 dB.
TOLERANCE_DB = _float32_db_error(DYNAMIC_RANGE_DB)


def _make_signal(name, tmp_path):
  rng = np.random.default_rng(0)
  t = np.arange(3 * SR) / SR
  if name == 'white_noise':
    return 0.1 * rng.standard_normal(t.size)
  if name == 'chirp':
    # Sweeps 50 Hz to 7.95 kHz so every mel band is the loudest somewhere.
    return 0.5 * np.sin(2 * np.pi * (50 * t + (7900 / 6) * t**2))
  if name == 'quiet_tone':
    tone = 1e-3 * np.sin(2 * np.pi * 1000 * t) * (t >= 1.5)
    return 1e-4 * rng.standard_normal(t.size) + tone
  if name == 'pcm16_wav':
    clip = 0.3 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / 'clip.wav'
    soundfile.write(path, np.clip(clip, -1, 1), SR, subtype='PCM_16')
    y, sr = soundfile.read(path)
    assert sr == SR
    return y
  raise ValueError(name)


@pytest.fixture(params=SIGNALS)
def signal(request, tmp_path):
  return request.param, _make_signal(request.param, tmp_path)


def _max_db_error(name, label, ours, ref):
  assert ours.shape == ref.shape
  assert ours.dtype == np.float32
  mask = ref >= ref.max() - DYNAMIC_RANGE_DB
  error = float(np.max(np.abs(ours - ref)[mask]))
  print(
    f'{label} {name}: max |dB diff| {error:.3g} over {mask.mean():.0%} of bins'
  )
  return error


@pytest.mark.numerics
def test_default_matches_librosa_melspectrogram(signal):
  name, y = signal
  mel = librosa.feature.melspectrogram(
    y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=2.0
  )
  ref = (20 / 2 * np.log10(mel + sys.float_info.epsilon)).T
  ours = np.asarray(features.log_mel(y))
  assert _max_db_error(name, 'default', ours, ref) <= TOLERANCE_DB


@pytest.mark.numerics
def test_htk_torchaudio_style_matches_librosa(signal):
  name, y = signal
  power_spec = (
    np.abs(
      librosa.stft(
        y, n_fft=N_FFT, hop_length=HOP, center=True, pad_mode='reflect'
      )
    )
    ** 2
  )
  fb = librosa.filters.mel(
    sr=SR, n_fft=N_FFT, n_mels=N_MELS, htk=True, norm=None
  )
  ref = (10 * np.log10(np.maximum(fb @ power_spec, 1e-10))).T
  ours = np.asarray(
    features.log_mel(
      y, htk=True, norm=None, log_floor=1e-10, pad_mode='reflect'
    )
  )
  assert _max_db_error(name, 'htk', ours, ref) <= TOLERANCE_DB


@pytest.mark.numerics
@pytest.mark.parametrize('htk', [False, True])
@pytest.mark.parametrize('norm', ['slaney', None])
@pytest.mark.parametrize(
  'sr,n_fft,n_mels,fmin,fmax',
  [
    (16000, 1024, 128, 0.0, None),
    (22050, 2048, 64, 40.0, 9000.0),
  ],
)
def test_filterbank_matches_librosa(htk, norm, sr, n_fft, n_mels, fmin, fmax):
  ours = features.mel_filterbank(
    sr, n_fft, n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
  )
  ref = librosa.filters.mel(
    sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
  )
  assert ours.shape == (n_mels, 1 + n_fft // 2)
  assert ours.dtype == np.float32
  # Both compute in float64 (NumPy, no XLA) and round to float32: ours once,
  # librosa twice (it scales its float32 weights by the Slaney norm), so
  # within 3 roundings of u = 2**-24, plus float64 noise: 4 u = 2.4e-7.
  bound = 4 * np.finfo(np.float32).eps / 2
  np.testing.assert_allclose(ours, ref, rtol=bound, atol=bound * ref.max())


def _reordered_db_error(logmel):
  """Bound on two float32 computations of `logmel` that sum in other orders."""
  return 2 * _float32_db_error(np.max(logmel) - np.min(logmel))


@pytest.mark.numerics
def test_batched_and_jitted_match_single_clip():
  y = _make_signal('white_noise', None)
  single = np.asarray(features.log_mel(y))
  batch = np.repeat(y[None], 3, axis=0)
  batched = np.asarray(features.log_mel(batch))
  assert batched.shape == (3,) + single.shape
  for clip in batched:
    np.testing.assert_allclose(clip, single, atol=_reordered_db_error(single))

  jitted = jax.jit(
    functools.partial(
      features.log_mel, htk=True, norm=None, pad_mode='reflect', log_floor=1e-10
    )
  )
  eager = np.asarray(
    features.log_mel(
      batch[:, None], htk=True, norm=None, pad_mode='reflect', log_floor=1e-10
    )
  )
  np.testing.assert_allclose(
    np.asarray(jitted(batch[:, None])), eager, atol=_reordered_db_error(eager)
  )
  static = jax.jit(features.log_mel, static_argnames=('n_mels',))
  assert static(batch, n_mels=64).shape == (3, single.shape[0], 64)


@pytest.mark.filterwarnings('ignore:n_fft=1024 is too large')
@pytest.mark.parametrize('n_samples', [16000 * 2 + 123, 16000 * 10, 1000])
def test_frame_count_matches_librosa(n_samples):
  y = np.random.default_rng(1).standard_normal(n_samples)
  ref = librosa.feature.melspectrogram(
    y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS
  )
  ours = features.log_mel(y)
  assert ours.shape == (ref.shape[1], N_MELS)
  assert ours.shape[0] == 1 + n_samples // HOP


def test_stack_frames_matches_baseline_order():
  logmel = np.random.default_rng(2).standard_normal((2, 12, 7))
  frames = 5
  stacked = np.asarray(features.stack_frames(logmel, frames=frames))
  assert stacked.shape == (2, 12 - frames + 1, frames * 7)
  for b in range(2):
    expected = np.zeros((12 - frames + 1, frames * 7))
    for t in range(frames):
      expected[:, 7 * t : 7 * (t + 1)] = logmel[b, t : t + 12 - frames + 1]
    np.testing.assert_array_equal(stacked[b], expected.astype(stacked.dtype))


def test_stack_frames_ten_second_clip_gives_309_vectors():
  vectors = features.stack_frames(features.log_mel(np.zeros(10 * SR)))
  assert vectors.shape == (309, 640)


def test_stack_frames_rejects_too_few_frames():
  with pytest.raises(AeasdError, match='frames'):
    features.stack_frames(np.zeros((4, 128)), frames=5)


@pytest.mark.parametrize(
  'kwargs,argument',
  [
    ({'n_mels': 0}, 'n_mels'),
    ({'hop_length': -1}, 'hop_length'),
    ({'n_fft': 1.5}, 'n_fft'),
    ({'power': 0.0}, 'power'),
    ({'pad_mode': 'edge'}, 'pad_mode'),
    ({'norm': 'l2'}, 'norm'),
    ({'log_floor': 0.0}, 'log_floor'),
    ({'fmax': 9000.0}, 'fmax'),
    ({'sample_rate': 0}, 'sample_rate'),
  ],
)
def test_log_mel_rejects_bad_arguments(kwargs, argument):
  with pytest.raises(AeasdError, match=argument):
    features.log_mel(np.zeros(SR), **kwargs)


def test_reflect_padding_rejects_too_short_clip():
  with pytest.raises(AeasdError, match='samples'):
    features.log_mel(np.zeros(100), pad_mode='reflect')


def test_bucket_frames_bounds_padding_and_programs():
  frames = np.arange(1, 5000)
  buckets = np.array([features.bucket_frames(int(n)) for n in frames])
  assert np.all(buckets >= frames)
  assert np.all(buckets <= 1.25 * frames)
  assert np.all(np.diff(buckets) >= 0)
  assert features.bucket_frames(313) == 320  # A 10 s clip at 16 kHz.
  # At most four buckets per doubling of the frame count.
  for low in 2 ** np.arange(3, 12):
    assert len(set(buckets[(frames > low) & (frames <= 2 * low)])) <= 4


# Lengths around hop and bucket edges, odd ones, and n_fft // 2 + 1, the
# shortest clip reflect padding takes.
_CLIP_SAMPLES = (
  N_FFT // 2 + 1,
  N_FFT,
  3 * HOP - 1,
  3 * HOP,
  8 * HOP,
  16000,
  16000 + 511,
  16000 + 512,
  2 * SR + 123,
  5 * SR + 7,
)


@pytest.mark.numerics
@pytest.mark.parametrize('pad_mode', ['constant', 'reflect'])
def test_clip_log_mel_equals_log_mel_of_each_clip(pad_mode):
  params = dict(pad_mode=pad_mode, n_mels=32)
  clip_log_mel = features.ClipLogMel(params)
  rng = np.random.default_rng(3)
  for n in _CLIP_SAMPLES:
    # A tone in noise: every bin within about 35 dB of the loudest, so the
    # reordering bound is tight enough to see a wrong sample in a frame.
    t = np.arange(n) / SR
    y = 0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * t)
    expected = np.asarray(features.log_mel(y, **params))
    (ours,) = clip_log_mel([y], rows=2)
    assert ours.shape == expected.shape == (1 + n // HOP, 32), n
    tolerance = _reordered_db_error(expected)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance)
    extra = clip_log_mel.padded_samples(n) - N_FFT - n
    if pad_mode == 'reflect' and extra > 0:
      # Zeros appended before the reflect padding would be mirrored into
      # the last frame: the bound above would catch that.
      naive = np.asarray(features.log_mel(np.pad(y, (0, extra)), **params))
      assert np.abs(naive[n // HOP] - expected[-1]).max() > 10 * tolerance, n
  assert len(clip_log_mel.shapes) == len(
    {clip_log_mel.padded_samples(n) for n in _CLIP_SAMPLES}
  )


def test_clip_log_mel_refuses_mixed_lengths_and_short_clips():
  clip_log_mel = features.ClipLogMel({'pad_mode': 'reflect'})
  with pytest.raises(AeasdError, match='one padded length'):
    clip_log_mel([np.zeros(SR), np.zeros(2 * SR)])
  with pytest.raises(AeasdError, match='rows=1'):
    clip_log_mel([np.zeros(SR), np.zeros(SR)], rows=1)
  with pytest.raises(AeasdError, match='at least 513 samples'):
    clip_log_mel([np.zeros(100)])
  with pytest.raises(AeasdError, match='n_mels'):
    features.ClipLogMel({'n_mels': 0})
