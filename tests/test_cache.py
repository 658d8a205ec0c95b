"""Tests for aeasd_jax.cache: building, reusing and checking the frame cache."""

import builtins
import errno
import fcntl
import functools
import gc
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile

from aeasd_jax.data import audio
from aeasd_jax.data import cache
from aeasd_jax.data import cache_compute
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.data import features
from aeasd_jax import runtime
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
    clips, params or FEATURES, {"resample": bool(resample), "channel": "mean"}
  )


def _assert_nothing_left(cache_dir, key):
  """No finished cache for `key` and no temporary build folder remain."""
  assert not (cache_dir / key).exists()
  assert not list(cache_dir.glob(".tmp-*"))


def _count_builds(monkeypatch):
  """Wraps cache_compute.compute_frames; returns the list of its calls."""
  calls = []
  real = cache_compute.compute_frames

  def counted(*args, **kwargs):
    calls.append(args[1])
    return real(*args, **kwargs)

  monkeypatch.setattr(cache_compute, "compute_frames", counted)
  return calls


def _no_rebuild(*args, **kwargs):
  raise AssertionError("the cache was rebuilt")


def _trace_log_mel(monkeypatch, fail_on=None, interrupt=RuntimeError):
  """Records the shape of each log-mel trace (one compiled program each).

  The trace numbered `fail_on` (from 1) raises `interrupt`.
  """
  traced = []
  real = features._log_mel_of_padded

  def traced_log_mel(padded, *args, **kwargs):
    traced.append(padded.shape)
    if len(traced) == fail_on:
      raise interrupt("interrupted")
    return real(padded, *args, **kwargs)

  monkeypatch.setattr(features, "_log_mel_of_padded", traced_log_mel)
  return traced


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
  monkeypatch.setattr(cache_compute, "compute_frames", _no_rebuild)
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
  monkeypatch.setattr(cache_compute, "compute_frames", _no_rebuild)
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


def _replace_keeping_size_and_mtime(clip, index, how="in_place"):
  """Puts another clip's audio, of the same size, in `clip`'s file.

  Then restores the file's atime and mtime, as cp -p, rsync -a or tar do.
  in_place rewrites the file's bytes; renamed_over renames a new file over
  it, as rsync does.
  """
  path = pathlib.Path(clip.path)
  before = os.stat(path)
  other = _write_clip(path.parent / "other", index, seconds=0.5)
  data = pathlib.Path(other.path).read_bytes()
  assert len(data) == before.st_size and data != path.read_bytes()
  if how == "in_place":
    with open(path, "r+b") as f:
      f.write(data)
  else:
    staged = path.with_name(".staged.wav")
    staged.write_bytes(data)
    os.replace(staged, path)
  os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
  after = os.stat(path)
  assert (after.st_size, after.st_mtime_ns) == (
    before.st_size,
    before.st_mtime_ns,
  )
  return other


@pytest.mark.parametrize("how", ["in_place", "renamed_over"])
def test_other_audio_with_the_old_size_and_mtime_rebuilds(
  tmp_path, monkeypatch, how
):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  old_frames = np.array(first.clip_frames(1))
  _replace_keeping_size_and_mtime(clips[1], 7, how)
  calls = _count_builds(monkeypatch)
  second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert len(calls) == 1
  assert second.directory != first.directory
  direct = np.asarray(_direct_log_mel(audio.read_audio(clips[1].path)))
  np.testing.assert_allclose(second.clip_frames(1), direct, rtol=0, atol=1e-4)
  assert np.abs(second.clip_frames(1) - old_frames).max() > 1.0
  assert second.digests[1] != first.digests[1]
  assert second.digests[::2] == first.digests[::2]


def test_a_file_changed_during_the_build_is_refused(tmp_path, monkeypatch):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  real = cache_compute._decode

  def decode_then_change(clip, *args):
    result = real(clip, *args)
    if clip == clips[1]:
      _replace_keeping_size_and_mtime(clip, 7)
    return result

  with monkeypatch.context() as patch:
    patch.setattr(cache_compute, "_decode", decode_then_change)
    with pytest.raises(
      AeasdError,
      match=re.escape(
        f"{clips[1].path}: changed while the feature cache was built"
        " (1 file(s) changed); expected the audio files to stay unchanged"
        " during a build; run again"
      ),
    ):
      cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert not [p for p in cache_dir.iterdir()]
  fc = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  direct = np.asarray(_direct_log_mel(audio.read_audio(clips[1].path)))
  np.testing.assert_allclose(fc.clip_frames(1), direct, rtol=0, atol=1e-4)


def _blake2b(path):
  data = pathlib.Path(path).read_bytes()
  return hashlib.blake2b(data, digest_size=32).hexdigest()


def test_digests_are_of_each_kept_file_in_clip_order(tmp_path, monkeypatch):
  clips, good, _ = _bad_clips(tmp_path)
  cache_dir = tmp_path / "cache"
  fc = cache.build_or_load(
    clips, FEATURES, cache_dir, skip_bad_files=True, **BUILD
  )
  expected = tuple(_blake2b(c.path) for c in good)
  assert fc.digests == expected
  assert all(len(d) == 64 for d in expected)
  index = json.loads((fc.directory / cache.INDEX_FILE).read_text())
  assert index["version"] == cache.FORMAT_VERSION == 3
  assert fc.directory.name.startswith(index["lineage"] + "-")
  monkeypatch.setattr(cache_compute, "compute_frames", _no_rebuild)
  again = cache.build_or_load(
    clips, FEATURES, cache_dir, skip_bad_files=True, **BUILD
  )
  assert again.digests == expected
  assert cache.load(fc.directory).digests == expected


def _touch(path):
  """A new mtime: the file's next version, as an edit would make it."""
  stat = os.stat(path)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def _bytes(folder):
  return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _folders(cache_dir):
  return sorted(p.name for p in cache_dir.iterdir())


def test_a_rebuild_evicts_the_build_it_supersedes(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="aeasd_jax")
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  other_params = {**FEATURES, "n_mels": 8}
  kept = cache.build_or_load(clips, other_params, cache_dir, **BUILD).directory
  caplog.clear()
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD).directory
  first_bytes = _bytes(first)
  assert caplog.messages == [
    f"feature cache: 3 clips, {first_bytes / 1e6:.1f} MB in {first}; the"
    f" cache folder holds {_bytes(cache_dir) / 1e6:.1f} MB in all"
  ]
  caplog.clear()
  gc.collect()  # Nothing of this process holds the first build any more.
  _touch(clips[1].path)
  second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD).directory
  assert second != first
  # Another setting's cache is another lineage: it stays.
  assert _folders(cache_dir) == sorted([kept.name, second.name])
  assert (
    f"feature cache: removed superseded {first}, freeing"
    f" {first_bytes / 1e6:.1f} MB" in caplog.messages
  )
  assert caplog.messages[-1].endswith(
    f"the cache folder holds {_bytes(cache_dir) / 1e6:.1f} MB in all"
  )


def _exclusive_lock_free(directory):
  """Whether an evictor could lock `directory` now (as another process)."""
  fd = os.open(directory / cache.LOCK_FILE, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  finally:
    os.close(fd)


def test_a_build_this_process_still_uses_is_kept(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="aeasd_jax")
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  again = cache.load(first.directory)  # Two holders share one lock.
  _touch(clips[1].path)
  second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert (
    f"feature cache: kept superseded {first.directory}: this process uses"
    " it" in caplog.messages
  )
  np.testing.assert_array_equal(again.frames, first.frames)
  first_dir = first.directory
  del first
  gc.collect()
  assert not _exclusive_lock_free(first_dir)
  del again
  gc.collect()
  assert _exclusive_lock_free(first_dir)
  cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert _folders(cache_dir) == [second.directory.name]


_READER = """
import sys
from aeasd_jax.data import cache
fc = cache.load(sys.argv[1])
print(float(fc.frames.sum()), flush=True)
sys.stdin.read()
print(float(fc.frames.sum()), flush=True)
"""


def test_a_build_another_process_reads_is_kept_until_it_is_done(
  tmp_path, caplog
):
  caplog.set_level(logging.INFO, logger="aeasd_jax")
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  first = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  first_dir, first_sum = first.directory, float(first.frames.sum())
  del first
  gc.collect()
  reader = subprocess.Popen(
    [sys.executable, "-c", _READER, str(first_dir)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    cwd=pathlib.Path(__file__).parents[1],
  )
  try:
    assert float(reader.stdout.readline()) == first_sum
    _touch(clips[1].path)
    second = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
    assert first_dir.is_dir()
    assert (
      f"feature cache: kept superseded {first_dir}: another process is"
      " using it" in caplog.messages
    )
    out, _ = reader.communicate("", timeout=60)
  finally:
    reader.kill()
  assert float(out) == first_sum
  assert reader.returncode == 0
  # The next run, only loading, evicts what is no longer read.
  cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert _folders(cache_dir) == [second.directory.name]


def test_a_cache_being_evicted_does_not_load(tmp_path):
  directory = cache.build_or_load(
    _clips(tmp_path), FEATURES, tmp_path / "cache", **BUILD
  ).directory
  gc.collect()
  fd = os.open(directory / cache.LOCK_FILE, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(
      AeasdError,
      match=re.escape(
        f"feature cache {directory}: no such cache (or another process"
        " removed it as superseded)"
      ),
    ):
      cache.load(directory)
  finally:
    os.close(fd)
  assert cache.load(directory).directory == directory


def test_leftovers_of_killed_builds_and_evictions_are_removed(tmp_path):
  clips = _clips(tmp_path)
  cache_dir = tmp_path / "cache"
  # pid_max is at most 2**22, so no process has this id.
  dead = [".tmp-0123456789ab-00-99999999", ".evict-0123456789ab-00-99999999"]
  for name in dead:
    (cache_dir / name).mkdir(parents=True)
    (cache_dir / name / cache.FRAMES_FILE).write_bytes(b"\0" * 64)
  live = cache_dir / f".tmp-0123456789ab-01-{os.getpid()}"
  live.mkdir()
  fc = cache.build_or_load(clips, FEATURES, cache_dir, **BUILD)
  assert _folders(cache_dir) == sorted([live.name, fc.directory.name])


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_leaves_nothing_that_loads(
  tmp_path, monkeypatch, interrupt
):
  # Two length buckets, so log_mel is traced a second time after the first
  # batch's frames are already on disk: the build dies half way through.
  clips = _clips(tmp_path, (0.5, 0.5, 0.8))
  cache_dir = tmp_path / "cache"
  with monkeypatch.context() as patch:
    traced = _trace_log_mel(patch, fail_on=2, interrupt=interrupt)
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
  monkeypatch.setattr(cache_compute, "compute_frames", _no_rebuild)
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
  monkeypatch.setattr(cache_compute, "compute_frames", _no_rebuild)
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
  real = cache_compute.compute_frames

  def racing(*args, **kwargs):
    result = real(*args, **kwargs)
    shutil.copytree(theirs, cache_dir / theirs.name)
    return result

  monkeypatch.setattr(cache_compute, "compute_frames", racing)
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
  clips = _clips(tmp_path, (0.5, 0.5, 0.8))
  _trace_log_mel(monkeypatch, fail_on=2, interrupt=interrupt)
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
  # A 2 s clip among 0.25 s ones, with a budget of 1.2 s a call: the short
  # clips go 4 to a call (batch_size), 0.3 s ones 3, the long one alone.
  # The budget counts the samples a clip is computed at, its bucket's.
  seconds = (0.25,) * 5 + (2.0,) + (0.3,) * 4
  clips = _clips(tmp_path, seconds)
  traced = _trace_log_mel(monkeypatch)
  fc = cache.build_or_load(
    clips,
    FEATURES,
    tmp_path / "cache",
    **{**BUILD, "batch_size": 4, "batch_seconds": 1.2},
  )
  padded = {s: _bucket_samples(int(s * SR)) for s in (0.25, 0.3, 2.0)}
  assert padded == {0.25: 4608, 0.3: 5632, 2.0: 33280}
  assert sorted(traced) == [(1, padded[2.0]), (3, padded[0.3]), (4, 4608)]
  assert 4 * padded[0.25] <= 1.2 * SR < 4 * padded[0.3]
  for i, clip in enumerate(clips):
    direct = np.asarray(_direct_log_mel(audio.read_audio(clip.path)))
    np.testing.assert_allclose(fc.clip_frames(i), direct, rtol=0, atol=1e-4)


def _bucket_samples(n_samples):
  """The samples ClipLogMel computes a clip of n_samples at (FEATURES)."""
  frames = features.bucket_frames(1 + n_samples // HOP)
  return (frames - 1) * HOP + FEATURES["n_fft"]


def test_distinct_lengths_compile_a_program_per_bucket(tmp_path):
  # 12 lengths, 15 to 26 frames, fall in 4 buckets: 16, 20, 24 and 28.
  seconds = [(14 + i) * HOP / SR + 0.01 for i in range(12)]
  clips = _clips(tmp_path, seconds)
  with runtime.compile_tracker() as compiles:
    fc = cache.build_or_load(clips, FEATURES, tmp_path / "cache", **BUILD)
  assert compiles.programs == 4
  frames = [1 + int(round(s * SR)) // HOP for s in seconds]
  assert frames == list(range(15, 27))
  assert {features.bucket_frames(f) for f in frames} == {16, 20, 24, 28}
  assert fc.lengths.tolist() == frames
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
