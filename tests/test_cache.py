"""Tests for aeasd_jax.cache: building, reusing and checking the frame cache."""

import builtins
import errno
import functools
import json
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
import soundfile

from aeasd_jax import audio
from aeasd_jax import cache
from aeasd_jax import dataset
from aeasd_jax import dcase
from aeasd_jax import features
from aeasd_jax.errors import AeasdError

SR = 16000
HOP = 512
FEATURES = dict(
  sample_rate=SR,
  n_fft=1024,
  hop_length=HOP,
  n_mels=16,
  power=2.0,
  htk=False,
  norm="slaney",
  pad_mode="constant",
  log_floor=None,
  fmin=0.0,
  fmax=None,
)
# Small batches and few threads keep every build to a compile or two.
BUILD = dict(num_workers=2, batch_size=2, show_progress=False)

_direct_log_mel = jax.jit(functools.partial(features.log_mel, **FEATURES))


def _write_clip(folder, index, seconds=0.5, rate=SR, machine_id="00"):
  """Writes a distinct noisy tone and returns its dcase.Clip."""
  rng = np.random.default_rng(index)
  n = int(round(seconds * rate))
  t = np.arange(n) / rate
  x = 0.3 * np.sin(2 * np.pi * (200 + 150 * index) * t)
  x += 0.05 * rng.standard_normal(n)
  path = folder / f"normal_id_{machine_id}_{index:08d}.wav"
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, x.astype(np.float32), rate, subtype="PCM_16")
  return dcase.parse_clip(path, "fan", "train", "dev")


def _clips(tmp_path, seconds=(0.5, 0.5, 0.5)):
  folder = tmp_path / "data" / "dev_data" / "fan" / "train"
  return [_write_clip(folder, i, s) for i, s in enumerate(seconds)]


def _key(clips, resample=False, params=None):
  return cache.cache_key(
    clips, params or FEATURES, {"resample": bool(resample)}
  )


def _assert_nothing_left(cache_dir, key):
  """No finished cache for `key` and no temporary build folder remain."""
  assert not (cache_dir / key).exists()
  assert not list(cache_dir.glob(".tmp-*"))


def _count_builds(monkeypatch):
  """Wraps cache._compute_frames; returns the list of its calls."""
  calls = []
  real = cache._compute_frames

  def counted(*args, **kwargs):
    calls.append(args[1])
    return real(*args, **kwargs)

  monkeypatch.setattr(cache, "_compute_frames", counted)
  return calls


def _no_rebuild(*args, **kwargs):
  raise AssertionError("the cache was rebuilt")


@pytest.mark.numerics
def test_frames_match_direct_log_mel(tmp_path):
  # Mixed lengths, as ToyCar's 11 s clips beside 10 s ones, interleaved so a
  # batch is cut at every change of length as well as at batch_size.
  seconds = (1.0, 1.0, 1.0, 1.1, 1.1, 1.0)
  clips = _clips(tmp_path, seconds)
  cache_dir = tmp_path / "cache"
  fc = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)

  assert fc.directory == cache_dir / _key(clips)
  assert fc.clips == tuple(clips)
  assert fc.bad_files == ()
  expected_lengths = [1 + int(round(s * SR)) // HOP for s in seconds]
  assert fc.lengths.tolist() == expected_lengths
  assert (
    fc.offsets.tolist()
    == np.concatenate([[0], np.cumsum(expected_lengths)[:-1]]).tolist()
  )
  assert fc.lengths.dtype == np.int64 and fc.offsets.dtype == np.int64
  assert fc.frames.shape == (sum(expected_lengths), FEATURES["n_mels"])
  assert fc.frames.dtype == np.float32
  for i, clip in enumerate(clips):
    direct = np.asarray(_direct_log_mel(audio.read_audio(clip.path)))
    np.testing.assert_allclose(fc.clip_frames(i), direct, rtol=0, atol=1e-4)


def test_frames_are_memory_mapped_read_only(tmp_path):
  fc = cache.build_or_load(
    _clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD
  )
  assert isinstance(fc.frames, np.memmap)
  assert not fc.frames.flags.writeable
  assert os.path.samefile(fc.frames.filename, fc.directory / cache.FRAMES_FILE)


def test_load_matches_build(tmp_path):
  fc = cache.build_or_load(
    _clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD
  )
  again = cache.load(fc.directory)
  assert again.clips == fc.clips
  np.testing.assert_array_equal(again.frames, fc.frames)
  np.testing.assert_array_equal(again.offsets, fc.offsets)
  np.testing.assert_array_equal(again.lengths, fc.lengths)
  # The index records the settings the frames came from.
  index = json.loads((fc.directory / cache.INDEX_FILE).read_text())
  assert index["features"] == FEATURES
  assert index["key"] == fc.directory.name


def test_second_call_loads_without_rebuilding(tmp_path, monkeypatch):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  calls = _count_builds(monkeypatch)
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert len(calls) == 1
  monkeypatch.setattr(cache, "_compute_frames", _no_rebuild)
  second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert second.directory == first.directory
  np.testing.assert_array_equal(second.frames, first.frames)
  assert sorted(p.name for p in cache_dir.iterdir()) == [first.directory.name]


def test_feature_param_change_rebuilds(tmp_path, monkeypatch):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  calls = _count_builds(monkeypatch)
  params = {**FEATURES, "n_mels": 8}
  second = cache.build_or_load(clips, params, cache_dir, **BUILD)
  assert len(calls) == 1
  assert second.directory != first.directory
  assert second.frames.shape == (first.frames.shape[0], 8)
  # Each setting keeps its own cache; the first still loads as it was.
  monkeypatch.setattr(cache, "_compute_frames", _no_rebuild)
  again = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  np.testing.assert_array_equal(again.frames, first.frames)


def test_key_depends_on_every_input(tmp_path):
  clips = _clips(tmp_path)
  key = _key(clips)
  assert _key(clips) == key
  assert _key(clips, resample=True) != key
  for name, value in (
    ("hop_length", 256),
    ("log_floor", 1e-10),
    ("pad_mode", "reflect"),
    ("fmax", 7000.0),
  ):
    assert _key(clips, params={**FEATURES, name: value}) != key, name
  assert _key(clips[:-1]) != key
  assert _key(clips[::-1]) != key  # Storage order is part of the cache.


def test_file_mtime_change_rebuilds(tmp_path, monkeypatch):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  stat = os.stat(clips[1].path)
  os.utime(clips[1].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  calls = _count_builds(monkeypatch)
  second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert len(calls) == 1
  assert second.directory != first.directory


def test_file_size_change_rebuilds(tmp_path, monkeypatch):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  # Same name, longer audio, and the old mtime: only the size tells.
  stat = os.stat(clips[0].path)
  replaced = _write_clip(pathlib.Path(clips[0].path).parent, 0, seconds=0.6)
  os.utime(replaced.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  calls = _count_builds(monkeypatch)
  second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert len(calls) == 1
  assert second.directory != first.directory
  assert second.lengths[0] == 1 + int(0.6 * SR) // HOP
  assert second.lengths[1:].tolist() == first.lengths[1:].tolist()


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_leaves_nothing_that_loads(
  tmp_path, monkeypatch, interrupt
):
  # Two lengths, so log_mel is traced a second time after the first batch's
  # frames are already on disk: the build dies half way through.
  clips = _clips(tmp_path, (0.5, 0.5, 0.6))
  cache_dir = tmp_path / "cache"
  traced = []
  real_log_mel = features.log_mel

  def failing_log_mel(y, **kwargs):
    traced.append(y.shape)
    if len(traced) > 1:
      raise interrupt("interrupted")
    return real_log_mel(y, **kwargs)

  with monkeypatch.context() as patch:
    patch.setattr(features, "log_mel", failing_log_mel)
    with pytest.raises(interrupt, match="interrupted"):
      cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert len(traced) == 2
  _assert_nothing_left(cache_dir, _key(clips))
  fc = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert fc.clips == tuple(clips)


def test_corrupt_index_fails_checksum(tmp_path, monkeypatch):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  directory = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD).directory
  index_path = directory / cache.INDEX_FILE
  index = json.loads(index_path.read_text())
  index["lengths"][0] += 1
  index_path.write_text(json.dumps(index))
  pattern = f"(?s){re.escape(str(directory))}.*checksum"
  with pytest.raises(AeasdError, match=pattern):
    cache.load(directory)
  # build_or_load reports it too, rather than trusting or hiding it.
  monkeypatch.setattr(cache, "_compute_frames", _no_rebuild)
  with pytest.raises(AeasdError, match=pattern):
    cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)


def test_unreadable_index(tmp_path):
  directory = cache.build_or_load(
    _clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD
  ).directory
  (directory / cache.INDEX_FILE).write_text("{not json")
  with pytest.raises(
    AeasdError, match=f"{re.escape(str(directory))}.*unreadable index"
  ):
    cache.load(directory)


def test_index_for_another_key(tmp_path):
  directory = cache.build_or_load(
    _clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD
  ).directory
  moved = directory.with_name("0" * 20)
  directory.rename(moved)
  with pytest.raises(AeasdError, match=f"index is for key {directory.name}"):
    cache.load(moved)


@pytest.mark.parametrize("damage", ["truncate", "extend", "delete"])
def test_frames_file_size_is_checked(tmp_path, damage):
  fc = cache.build_or_load(
    _clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD
  )
  frames_path = fc.directory / cache.FRAMES_FILE
  expected = int(fc.lengths.sum()) * FEATURES["n_mels"] * 4
  assert frames_path.stat().st_size == expected
  del fc  # Let go of the memory map before changing the file.
  if damage == "truncate":
    os.truncate(frames_path, expected - 4)
  elif damage == "extend":
    with open(frames_path, "ab") as f:
      f.write(b"\0" * 4)
  else:
    frames_path.unlink()
  with pytest.raises(
    AeasdError, match=re.escape(f"{frames_path}: expected {expected} bytes")
  ):
    cache.load(frames_path.parent)


def _bad_clips(tmp_path):
  """Three good clips with two bad ones between them."""
  folder = tmp_path / "data" / "dev_data" / "fan" / "train"
  good = [_write_clip(folder, i) for i in (0, 2, 4)]
  text = folder / "normal_id_00_00000001.wav"
  text.write_text("not audio\n")
  short = _write_clip(folder, 3, seconds=0.01)  # Shorter than n_fft.
  clips = [
    good[0],
    dcase.parse_clip(text, "fan", "train", "dev"),
    good[1],
    short,
    good[2],
  ]
  return clips, good, [str(text), short.path]


def test_bad_files_stop_the_build_listing_all(tmp_path):
  clips, _, bad_paths = _bad_clips(tmp_path)
  cache_dir = tmp_path / "cache"
  with pytest.raises(AeasdError) as info:
    cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  message = str(info.value)
  assert "2 bad audio file(s)" in message
  assert "skip_bad_files" in message
  for path in bad_paths:
    assert path in message
  _assert_nothing_left(cache_dir, _key(clips))


def test_skip_bad_files_keeps_the_good_ones(tmp_path, caplog):
  clips, good, bad_paths = _bad_clips(tmp_path)
  cache_dir = tmp_path / "cache"
  fc = cache.build_or_load(
    clips, FEATURES, cache_dir, skip_bad_files=True, **BUILD
  )
  assert fc.clips == tuple(good)
  assert fc.lengths.tolist() == [1 + SR // 2 // HOP] * 3
  assert len(fc.bad_files) == 2
  for path, reason in zip(bad_paths, fc.bad_files):
    assert reason.startswith(path)
  report = (fc.directory / cache.BAD_FILES_REPORT).read_text()
  assert report.splitlines() == list(fc.bad_files)
  assert "bad file(s) were left out" in caplog.text
  for i, clip in enumerate(good):
    direct = np.asarray(_direct_log_mel(audio.read_audio(clip.path)))
    np.testing.assert_allclose(fc.clip_frames(i), direct, rtol=0, atol=1e-4)


def test_skipped_cache_does_not_hide_bad_files(tmp_path, monkeypatch):
  # A cache built with skip_bad_files=True must still stop a run that has
  # skip_bad_files=False, as a fresh build would.
  clips, _, bad_paths = _bad_clips(tmp_path)
  cache_dir = tmp_path / "cache"
  cache.build_or_load(clips, FEATURES, cache_dir, skip_bad_files=True, **BUILD)
  monkeypatch.setattr(cache, "_compute_frames", _no_rebuild)
  with pytest.raises(AeasdError, match="skip_bad_files") as info:
    cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert all(path in str(info.value) for path in bad_paths)


def test_file_deleted_after_discovery_is_a_bad_file(tmp_path):
  clips = _clips(tmp_path)
  os.remove(clips[1].path)
  with pytest.raises(AeasdError, match=re.escape(clips[1].path)):
    cache.build_or_load(clips, FEATURES, tmp_path / "cache", **BUILD)
  fc = cache.build_or_load(
    clips, FEATURES, tmp_path / "cache", skip_bad_files=True, **BUILD
  )
  assert fc.clips == (clips[0], clips[2])
  assert fc.bad_files[0].startswith(clips[1].path)


def test_all_files_bad_with_skip_gives_a_consistent_empty_cache(tmp_path):
  folder = tmp_path / "data"
  clips = [_write_clip(folder, i, seconds=0.01) for i in range(2)]
  fc = cache.build_or_load(
    clips, FEATURES, tmp_path / "cache", skip_bad_files=True, **BUILD
  )
  assert fc.clips == ()
  assert fc.frames.shape == (0, FEATURES["n_mels"])
  assert fc.offsets.shape == fc.lengths.shape == (0,)
  assert len(fc.bad_files) == 2


def test_other_rate_needs_resample(tmp_path):
  folder = tmp_path / "data"
  clips = [_write_clip(folder, 0), _write_clip(folder, 1, rate=8000)]
  with pytest.raises(AeasdError, match="config.data.resample"):
    cache.build_or_load(clips, FEATURES, tmp_path / "cache", **BUILD)
  fc = cache.build_or_load(
    clips, FEATURES, tmp_path / "cache", resample=True, **BUILD
  )
  assert fc.lengths.tolist() == [1 + SR // 2 // HOP] * 2


def test_no_clips(tmp_path):
  with pytest.raises(AeasdError, match="no clips"):
    cache.build_or_load([], FEATURES, tmp_path / "cache", **BUILD)


def test_progress_line(tmp_path, capsys):
  clips = _clips(tmp_path)
  cache.build_or_load(
    clips, FEATURES, tmp_path / "cache", **{**BUILD, "show_progress": True}
  )
  assert f"feature cache: {len(clips)}/{len(clips)} clips" in (
    capsys.readouterr().err
  )


def test_another_process_finishing_first(tmp_path, monkeypatch):
  # If an identical build lands while this one runs, the rename fails and
  # the finished cache is used.
  clips = _clips(tmp_path)
  theirs = cache.build_or_load(
    clips, FEATURES, tmp_path / "a", **BUILD
  ).directory
  cache_dir = tmp_path / "b"
  real = cache._compute_frames

  def racing(*args, **kwargs):
    result = real(*args, **kwargs)
    shutil.copytree(theirs, cache_dir / theirs.name)
    return result

  monkeypatch.setattr(cache, "_compute_frames", racing)
  fc = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert fc.directory == cache_dir / theirs.name
  assert fc.clips == tuple(clips)
  assert not list(cache_dir.glob(".tmp-*"))


class _FullDisk:
  """A writable file whose writes fail with ENOSPC after `allowed` writes."""

  def __init__(self, file, allowed):
    self._file = file
    self._allowed = allowed

  def write(self, data):
    if self._allowed <= 0:
      raise OSError(errno.ENOSPC, "No space left on device")
    self._allowed -= 1
    return self._file.write(data)

  def __getattr__(self, name):
    return getattr(self._file, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._file.close()


@pytest.mark.parametrize(
  "filename,allowed", [(cache.FRAMES_FILE, 1), (cache.INDEX_FILE, 0)]
)
def test_disk_full(tmp_path, monkeypatch, filename, allowed):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  real_open = builtins.open

  def full_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if "w" in mode and os.path.basename(os.fspath(file)) == filename:
      return _FullDisk(f, allowed)
    return f

  with monkeypatch.context() as patch:
    patch.setattr(builtins, "open", full_open)
    with pytest.raises(AeasdError) as info:
      cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  message = str(info.value)
  assert str(cache_dir) in message
  assert "No space left on device" in message
  assert "config.data.cache_dir" in message
  _assert_nothing_left(cache_dir, _key(clips))
  fc = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert fc.clips == tuple(clips)


def test_truncated_and_dangling_files_are_bad_files(tmp_path):
  clips = _clips(tmp_path, (0.5, 0.5, 1.0))
  folder = pathlib.Path(clips[0].path).parent
  data = pathlib.Path(clips[2].path).read_bytes()
  pathlib.Path(clips[2].path).write_bytes(data[: len(data) // 2])
  (folder / "normal_id_00_00000009.wav").symlink_to(tmp_path / "gone.wav")
  listed = [
    dcase.parse_clip(p, "fan", "train", "dev")
    for p in dcase.audio_files(folder)
  ]
  assert len(listed) == 4
  cache_dir = tmp_path / "cache"
  with pytest.raises(AeasdError) as info:
    cache.build_or_load(listed, FEATURES, cache_dir, **BUILD)
  message = str(info.value)
  assert "2 bad audio file(s)" in message
  assert f"{clips[2].path}: truncated: the data chunk declares" in message
  assert (
    f"{folder / 'normal_id_00_00000009.wav'}: dangling symbolic link"
    f" to {tmp_path / 'gone.wav'}"
  ) in message
  fc = cache.build_or_load(
    listed, FEATURES, cache_dir, skip_bad_files=True, **BUILD
  )
  assert fc.clips == tuple(clips[:2])


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_progress_line_is_ended_when_the_build_stops(
  tmp_path, monkeypatch, capsys, interrupt
):
  # The last log-mel call comes after the line shows 3/3 clips, so the
  # failure lands while the line is still open.
  clips = _clips(tmp_path, (0.5, 0.5, 0.6))
  real_log_mel = features.log_mel
  traced = []

  def failing_log_mel(y, **kwargs):
    traced.append(y.shape)
    if len(traced) > 1:
      raise interrupt("interrupted")
    return real_log_mel(y, **kwargs)

  monkeypatch.setattr(features, "log_mel", failing_log_mel)
  with pytest.raises(interrupt, match="interrupted"):
    cache.build_or_load(
      clips, FEATURES, tmp_path / "cache", **{**BUILD, "show_progress": True}
    )
  err = capsys.readouterr().err
  assert "feature cache: 3/3 clips" in err
  assert err.endswith("\n")


def test_no_progress_line_no_newline(tmp_path, capsys):
  cache.build_or_load(_clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD)
  assert capsys.readouterr().err == ""


def test_log_mel_calls_hold_at_most_batch_seconds_of_audio(
  tmp_path, monkeypatch
):
  # A 2 s clip among 0.25 s ones, with a budget of 1 s a call: the short
  # clips go 4 to a call (batch_size), 0.3 s ones 3, the long one alone.
  seconds = (0.25,) * 5 + (2.0,) + (0.3,) * 4
  clips = _clips(tmp_path, seconds)
  real_log_mel = features.log_mel
  traced = []

  def recording_log_mel(y, **kwargs):
    traced.append(y.shape)
    return real_log_mel(y, **kwargs)

  monkeypatch.setattr(features, "log_mel", recording_log_mel)
  fc = cache.build_or_load(
    clips,
    FEATURES,
    tmp_path / "cache",
    **{**BUILD, "batch_size": 4, "batch_seconds": 1.0},
  )
  assert sorted(traced) == [(1, 2 * SR), (3, 4800), (4, 4000)]
  for i, clip in enumerate(clips):
    direct = np.asarray(_direct_log_mel(audio.read_audio(clip.path)))
    np.testing.assert_allclose(fc.clip_frames(i), direct, rtol=0, atol=1e-4)


def test_dataset_passes_feature_batch_seconds(tiny_config, monkeypatch):
  seen = {}

  def stop(*args, **kwargs):
    seen.update(kwargs)
    raise AeasdError("stop")

  monkeypatch.setattr(cache, "build_or_load", stop)
  tiny_config.data.feature_batch_seconds = 12.5
  with pytest.raises(AeasdError, match="stop"):
    dataset.load(tiny_config, show_progress=False)
  assert seen["batch_seconds"] == 12.5
