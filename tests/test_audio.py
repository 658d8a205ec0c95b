"""Tests for aeasd_jax.audio.read_audio: formats, mono mixing, bad files."""

import builtins
import os
import re
import struct
import threading

import numpy as np
import pytest
import soundfile

from aeasd_jax.data import audio
from aeasd_jax.errors import AeasdError

SR = 16000


def _sine(freq=440.0, seconds=0.25, rate=SR, amplitude=0.5):
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path, samples, rate=SR, subtype="PCM_16", **kwargs):
  soundfile.write(path, samples, rate, subtype=subtype, **kwargs)
  return path


def _raises(path, *patterns):
  """pytest.raises for an AeasdError naming `path` and every pattern."""
  lookaheads = "".join(f"(?=.*{p})" for p in (re.escape(str(path)),) + patterns)
  return pytest.raises(AeasdError, match=f"(?s)^{lookaheads}")


@pytest.mark.parametrize(
  "subtype,tolerance",
  [
    ("PCM_16", 1.0 / 2**15),
    ("PCM_24", 1.0 / 2**23),
    ("PCM_32", 1.0 / 2**31 + 1e-7),
    ("FLOAT", 0.0),
  ],
)
def test_wav_subtypes_read_back(tmp_path, subtype, tolerance):
  x = _sine()
  path = _write(tmp_path / "clip.wav", x, subtype=subtype)
  y = audio.read_audio(path)
  assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
  assert y.shape == x.shape
  np.testing.assert_allclose(y, x, rtol=0, atol=tolerance)


@pytest.mark.parametrize(
  "subtype,tolerance", [("PCM_16", 1.0 / 2**15), ("PCM_24", 1.0 / 2**23)]
)
def test_flac_reads_back(tmp_path, subtype, tolerance):
  x = _sine()
  path = _write(tmp_path / "clip.flac", x, subtype=subtype)
  np.testing.assert_allclose(audio.read_audio(path), x, rtol=0, atol=tolerance)


def test_accepts_str_and_pathlike(tmp_path):
  path = _write(tmp_path / "clip.wav", _sine(), subtype="FLOAT")
  np.testing.assert_array_equal(
    audio.read_audio(str(path)), audio.read_audio(path)
  )


def test_stereo_is_averaged_to_mono(tmp_path):
  left, right = _sine(440.0), _sine(1000.0, amplitude=0.25)
  path = _write(
    tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT"
  )
  y = audio.read_audio(path)
  assert y.shape == left.shape
  np.testing.assert_allclose(y, (left + right) / 2, rtol=0, atol=1e-7)


def test_eight_bit_pcm_is_accepted(tmp_path):
  # libsndfile decodes unsigned 8-bit WAV, so there is no reason to refuse it.
  x = _sine()
  path = _write(tmp_path / "u8.wav", x, subtype="PCM_U8")
  y = audio.read_audio(path)
  assert y.shape == x.shape
  np.testing.assert_allclose(y, x, rtol=0, atol=1.0 / 2**7)


def test_empty_file(tmp_path):
  path = tmp_path / "empty.wav"
  path.write_bytes(b"")
  with _raises(path, "the file is empty", "expected a WAV or FLAC clip"):
    audio.read_audio(path)


def test_valid_header_zero_samples(tmp_path):
  path = _write(tmp_path / "zero.wav", np.zeros(0, np.float32))
  assert path.stat().st_size > 0  # A real header, just no data.
  with _raises(path, "no samples", "expected a clip of at least 1024"):
    audio.read_audio(path, min_samples=1024)


def test_truncated_header(tmp_path):
  good = _write(tmp_path / "good.wav", _sine())
  path = tmp_path / "truncated.wav"
  path.write_bytes(good.read_bytes()[:20])
  with _raises(path, "not a readable WAV/FLAC file", "expected"):
    audio.read_audio(path)


def test_text_file_named_wav(tmp_path):
  path = tmp_path / "notes.wav"
  path.write_text("these are not the samples you are looking for\n" * 20)
  with _raises(path, "not a readable WAV/FLAC file", "expected"):
    audio.read_audio(path)


def test_missing_file(tmp_path):
  path = tmp_path / "nowhere" / "missing.wav"
  with _raises(path, "cannot open", "No such file"):
    audio.read_audio(path)


def test_directory_named_wav(tmp_path):
  path = tmp_path / "folder.wav"
  path.mkdir()
  with _raises(path, "cannot open"):
    audio.read_audio(path)


def test_permission_denied(tmp_path, monkeypatch):
  # CI runs as root, where chmod 000 does not stop reads, so refuse the open
  # for this one path the way the OS would.
  path = _write(tmp_path / "locked.wav", _sine())
  real_open = builtins.open

  def fake_open(file, *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and (
      os.fspath(file) == str(path)
    ):
      raise PermissionError(13, "Permission denied", str(path))
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", fake_open)
  with _raises(path, "cannot open", "Permission denied"):
    audio.read_audio(path)
  # Only that path was refused.
  other = _write(tmp_path / "open.wav", _sine())
  assert audio.read_audio(other).size == _sine().size


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad_value):
  x = _sine()
  x[100] = bad_value
  path = _write(tmp_path / "nonfinite.wav", x, subtype="FLOAT")
  with _raises(path, "NaN or Inf", "expected finite"):
    audio.read_audio(path)


def test_too_short(tmp_path):
  path = _write(tmp_path / "short.wav", _sine(seconds=0.03))  # 480 samples.
  with _raises(path, "480 samples", "n_fft=1024", "expected a longer clip"):
    audio.read_audio(path, min_samples=1024)


def test_exactly_min_samples_is_accepted(tmp_path):
  path = _write(tmp_path / "edge.wav", np.zeros(1024, np.float32))
  assert audio.read_audio(path, min_samples=1024).shape == (1024,)


@pytest.mark.parametrize("rate", [44100, 8000])
def test_other_rate_refused_without_resample(tmp_path, rate):
  path = _write(tmp_path / f"at_{rate}.wav", _sine(rate=rate), rate=rate)
  with _raises(
    path, f"{rate} Hz", "expected 16000 Hz", re.escape("config.data.resample")
  ):
    audio.read_audio(path)


@pytest.mark.parametrize("rate", [44100, 8000])
def test_resample_keeps_length_and_pitch(tmp_path, rate):
  freq, seconds = 1000.0, 0.5
  path = _write(
    tmp_path / f"at_{rate}.wav",
    _sine(freq, seconds=seconds, rate=rate),
    rate=rate,
    subtype="FLOAT",
  )
  y = audio.read_audio(path, resample=True)
  assert y.dtype == np.float32
  assert y.shape == (int(seconds * SR),)
  # A sine stays one sine at the same frequency: the FFT peaks at its bin and
  # nearly all the energy is near it.
  spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
  freqs = np.fft.rfftfreq(y.size, 1.0 / SR)
  peak = int(np.argmax(spectrum))
  assert freqs[peak] == pytest.approx(freq, abs=SR / y.size)
  near = np.abs(freqs - freq) <= 50.0
  assert np.sum(spectrum[near] ** 2) > 0.999 * np.sum(spectrum**2)
  # The level survives too (0.5 amplitude, away from the filter's edges).
  assert np.max(np.abs(y[y.size // 4 : -y.size // 4])) == pytest.approx(
    0.5, abs=0.02
  )


def test_min_samples_applies_after_resampling(tmp_path):
  # 600 samples at 8 kHz become 1200 at 16 kHz: long enough for n_fft=1024.
  up = _write(tmp_path / "at_8k.wav", np.zeros(600, np.float32), rate=8000)
  assert audio.read_audio(up, resample=True, min_samples=1024).size == 1200
  # 2000 samples at 44.1 kHz become 726 at 16 kHz: too short.
  down = _write(tmp_path / "at_44k.wav", np.zeros(2000, np.float32), rate=44100)
  with _raises(down, "726 samples", "expected a longer clip"):
    audio.read_audio(down, resample=True, min_samples=1024)


# The layouts libsndfile writes with a .wav name: plain RIFF, RIFF with fact
# and PEAK chunks (float), WAVE_FORMAT_EXTENSIBLE, big-endian RIFX, RF64 (sizes
# in a ds64 chunk) and Sony Wave64 (GUID chunk ids, 64-bit sizes).
_WAV_LAYOUTS = [
  (dict(format="WAV", subtype="PCM_16"), 2),
  (dict(format="WAV", subtype="FLOAT"), 4),
  (dict(format="WAVEX", subtype="PCM_24"), 3),
  (dict(format="WAV", subtype="PCM_16", endian="BIG"), 2),
  (dict(format="RF64", subtype="PCM_16"), 2),
  (dict(format="W64", subtype="PCM_16"), 2),
  (dict(format="WAV", subtype="PCM_U8"), 1),
]


@pytest.mark.parametrize("layout,sample_bytes", _WAV_LAYOUTS)
@pytest.mark.parametrize("channels", [1, 2])
def test_truncated_wav_is_reported(tmp_path, layout, sample_bytes, channels):
  x = np.stack([_sine()] * channels, axis=1)
  good = tmp_path / "good.wav"
  soundfile.write(good, x, SR, **layout)
  np.testing.assert_allclose(
    audio.read_audio(good), _sine(), rtol=0, atol=1.0 / 2**7
  )
  data = good.read_bytes()
  declared = x.size * sample_bytes
  # libsndfile writes the data chunk last, so its header ends here.
  data_start = len(data) - declared
  for kept in (len(data) // 2, len(data) - 1):
    path = tmp_path / f"cut_{kept}.wav"
    path.write_bytes(data[:kept])
    with _raises(
      path,
      re.escape(
        f"truncated: the data chunk declares {declared} bytes but the file"
        f" holds {kept - data_start}; expected a complete WAV file"
      ),
    ):
      audio.read_audio(path)


def _riff(chunks):
  """A RIFF WAVE file of (id, body) chunks, each padded to an even size."""
  body = b"WAVE" + b"".join(
    chunk_id + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)
    for chunk_id, data in chunks
  )
  return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt_pcm16(rate=SR, channels=1):
  return (
    b"fmt ",
    struct.pack(
      "<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16
    ),
  )


def test_odd_chunk_before_data_is_padded(tmp_path):
  x = (np.arange(2000) - 1000).astype("<i2")
  chunks = [_fmt_pcm16(), (b"LIST", b"odd"), (b"data", x.tobytes())]
  data = _riff(chunks)
  path = tmp_path / "odd.wav"
  path.write_bytes(data)
  np.testing.assert_array_equal(audio.read_audio(path), x / 2**15)
  path.write_bytes(data[:-1000])
  with _raises(path, "declares 4000 bytes but the file holds 3000"):
    audio.read_audio(path)


def test_odd_data_chunk_without_its_pad_byte_is_complete(tmp_path):
  # Writers often leave out the pad byte after odd-sized 8-bit data; every
  # sample is there, so the file is whole.
  x = np.arange(1025, dtype=np.uint8)
  fmt = (b"fmt ", struct.pack("<HHIIHH", 1, 1, SR, SR, 1, 8))
  path = tmp_path / "u8.wav"
  path.write_bytes(_riff([fmt, (b"data", x.tobytes())])[:-1])
  assert audio.read_audio(path).shape == (1025,)


def test_streamed_wav_of_unknown_size_is_read_to_the_end(tmp_path):
  # A streaming encoder cannot go back to fill in the sizes, so it writes
  # 0xFFFFFFFF; libsndfile then reads to the end of the file.
  x = (np.arange(2000) - 1000).astype("<i2")
  data = bytearray(_riff([_fmt_pcm16(), (b"data", x.tobytes())]))
  data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
  path = tmp_path / "streamed.wav"
  path.write_bytes(bytes(data))
  np.testing.assert_array_equal(audio.read_audio(path), x / 2**15)


def test_truncated_flac_is_reported(tmp_path):
  good = _write(tmp_path / "good.flac", _sine(seconds=2.0))
  path = tmp_path / "cut.flac"
  path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  with _raises(path, "expected"):
    audio.read_audio(path)


def test_fewer_frames_decoded_than_declared_is_reported(tmp_path, monkeypatch):
  # libsndfile 1.2 reports a cut FLAC itself; a decoder that silently stops
  # early must still not pass a short clip as a whole one.
  path = _write(tmp_path / "clip.flac", _sine())
  real_read = soundfile.SoundFile.read
  monkeypatch.setattr(
    soundfile.SoundFile,
    "read",
    lambda self, *a, **k: real_read(self, *a, **k)[:-100],
  )
  with _raises(
    path,
    f"truncated: the header declares {_sine().size} frames"
    f" but only {_sine().size - 100} decode",
  ):
    audio.read_audio(path)


def test_dangling_symbolic_link(tmp_path):
  path = tmp_path / "link.wav"
  path.symlink_to(tmp_path / "gone.wav")
  with _raises(
    path,
    "dangling symbolic link to",
    re.escape(str(tmp_path / "gone.wav")),
    "expected",
  ):
    audio.read_audio(path)


def test_symbolic_link_loop(tmp_path):
  path = tmp_path / "loop.wav"
  path.symlink_to(path)
  with _raises(path, "cannot open"):
    audio.read_audio(path)


def _release_fifo_readers(path):
  # A reader blocks in open() until a writer comes; be that writer, once.
  try:
    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
  except OSError:
    pass  # No reader: read_audio never opened it.


def test_fifo_is_refused_without_blocking(tmp_path):
  path = tmp_path / "pipe.wav"
  os.mkfifo(path)
  # So that a read_audio that does open it fails this test rather than hang.
  release = threading.Timer(5.0, _release_fifo_readers, [path])
  release.start()
  try:
    with _raises(path, "not a regular file", "expected"):
      audio.read_audio(path)
  finally:
    release.cancel()


def test_resample_to_a_float_rate(tmp_path):
  # check_config accepts sample_rate=16000.0; resampling needs whole factors.
  path = _write(tmp_path / "at_8k.wav", np.zeros(4000, np.float32), rate=8000)
  assert audio.read_audio(path, sample_rate=16000.0, resample=True).shape == (
    8000,
  )
