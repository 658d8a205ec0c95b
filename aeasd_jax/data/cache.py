"""The log-mel feature cache: every clip's frames computed once, memory-mapped.

A cache is one float32 file of all frames of all clips plus a JSON index.
It is built in a temporary folder and renamed into place, so an interrupted
build never leaves a cache that loads; a build evicts the builds it
supersedes once no process reads them.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil

import numpy as np

from aeasd_jax.data import cache_compute
from aeasd_jax.data import cache_folders
from aeasd_jax.data import dcase
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)

FRAMES_FILE = "frames.f32"
WAVES_FILE = "waves.f32"  # Only in caches of fixed-length clips, when asked.
INDEX_FILE = "index.json"
BAD_FILES_REPORT = "bad_files.txt"
LOCK_FILE = cache_folders.LOCK_FILE
# 2: the index holds the lineage and a digest of each clip's file.
# 3: clips name their section, subset, domain and attributes.
FORMAT_VERSION = 3


@dataclasses.dataclass(frozen=True)
class FeatureCache:
  """Frames of every clip, and where each clip's frames start and end."""

  directory: pathlib.Path
  frames: np.ndarray  # [total_frames, n_mels] float32, memory-mapped.
  clips: tuple  # dcase.Clip, in storage order.
  offsets: np.ndarray  # [num_clips] int64, first frame of each clip.
  lengths: np.ndarray  # [num_clips] int64, frames of each clip.
  bad_files: tuple  # "path: reason" for each file left out.
  # blake2b-256 hex digest of each clip's file bytes, in clip order.
  digests: tuple = ()
  # [num_clips, clip_samples] float32, memory-mapped: each clip's waveform,
  # tiled or cut to one length, where the cache was built with them.
  waves: np.ndarray = None
  # The shared lock that keeps other processes from evicting this cache;
  # released when the FeatureCache is garbage-collected. (Frames mapped
  # before an eviction stay readable: a deleted file lives on while mapped.)
  hold: object = dataclasses.field(default=None, repr=False, compare=False)

  def clip_frames(self, i):
    return self.frames[self.offsets[i] : self.offsets[i] + self.lengths[i]]


def _file_version(path):
  """What tells one version of a file from another, without reading it.

  Not a hash of the bytes: that would read the whole dataset (~10 GB for
  DCASE) at every run just to find its cache. st_ctime_ns is the guard: the
  kernel sets it to the current time on every write, truncation, rename and
  utime, and no system call sets it to a chosen value, so audio replaced
  with its old size and mtime restored (cp -p, rsync -a, tar x, os.utime)
  still changes the key. st_ino tells a
  file renamed over the clip (what rsync does) even with a clock set back.
  st_dev is left out: NFS, FUSE and LVM device numbers can change at a
  reboot, which would rebuild every cache for nothing, and the path already
  names the filesystem. What changes ctime but not the audio (chmod, chown,
  a new hard link) costs a rebuild, never stale frames. A filesystem that
  keeps no ctime of its own (some FUSE and SMB mounts) is guarded by size and
  mtime alone.
  """
  try:
    st = os.stat(path)
  except OSError:
    # read_audio reports the file as bad, with the others, while building.
    return "unreadable"
  return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _lineage(clips, feature_params, audio_params):
  """What a cache is for, apart from the files' versions.

  A build evicts the other builds of its lineage: the same clip paths and
  settings, older versions of the files.
  """
  digest = hashlib.sha256(
    json.dumps(
      {"features": feature_params, "audio": audio_params}, sort_keys=True
    ).encode()
  )
  for clip in clips:
    digest.update(f"{clip.path}\n".encode())
  return digest.hexdigest()[:12]


def _key(clips, versions, feature_params, audio_params):
  digest = hashlib.sha256(
    json.dumps(
      {
        "version": FORMAT_VERSION,
        "features": feature_params,
        "audio": audio_params,
      },
      sort_keys=True,
    ).encode()
  )
  for clip, version in zip(clips, versions):
    digest.update(f"{clip.path}\0{version}\n".encode())
  lineage = _lineage(clips, feature_params, audio_params)
  return f"{lineage}-{digest.hexdigest()[:20]}"


def cache_key(clips, feature_params, audio_params):
  """The cache's folder name: its lineage, then a hash of every input.

  The hash covers the format, the settings, and each clip's path and
  _file_version.
  """
  versions = [_file_version(c.path) for c in clips]
  return _key(clips, versions, feature_params, audio_params)


def build_or_load(
  clips,
  feature_params,
  cache_dir,
  *,
  resample=False,
  channel="mean",
  skip_bad_files=False,
  num_workers=8,
  batch_size=64,
  batch_seconds=640.0,
  show_progress=True,
  clip_samples=None,
  keep_waveforms=False,
):
  """Loads the cache for these clips and settings, building it if needed.

  Args:
    clips: the dcase.Clip list to cache.
    feature_params: keyword arguments of features.log_mel.
    cache_dir: the folder that holds one subfolder per cache key.
    resample: resample clips at another rate instead of refusing them.
    channel: of a multi-channel clip, "mean" or a channel index.
    skip_bad_files: leave bad files out (listed in a report) instead of
      stopping with the list of them.
    num_workers: threads decoding audio files.
    batch_size: the most clips per log-mel call on the device.
    batch_seconds: the most audio seconds per log-mel call, which bounds its
      memory; a clip longer than this goes in a call of its own.
    show_progress: print a clips/s progress line while building.
    clip_samples: tile (repeat) or cut every waveform to this many samples
      before its log-mel, so that every clip has one frame count (the
      classifiers' clip examples); None keeps each clip whole.
    keep_waveforms: also store those fixed-length waveforms (models that
      read the waveform, such as STgram-MFN's Tgram); needs clip_samples.

  Returns:
    A FeatureCache.
  """
  if not clips:
    raise AeasdError(
      "no clips to cache; check config.data.root and config.data.machine_types"
    )
  audio_params = {"resample": bool(resample), "channel": channel}
  # Added only when set, so the autoencoders' caches keep their keys.
  if clip_samples:
    audio_params["clip_samples"] = int(clip_samples)
  if keep_waveforms:
    audio_params["waveforms"] = True
  versions = [_file_version(c.path) for c in clips]
  directory = pathlib.Path(cache_dir) / _key(
    clips, versions, feature_params, audio_params
  )
  hold = cache_folders.hold(directory)
  built = hold is None
  if built:
    hold = _build(
      directory,
      clips,
      versions,
      feature_params,
      audio_params,
      skip_bad_files,
      num_workers,
      batch_size,
      batch_seconds,
      show_progress,
    )
  # What a clip is (its label, domain, section) comes from this run's
  # parsing of its name, not from the index: the key covers the files, not
  # the naming rules they were read with.
  by_path = {c.path: c for c in clips}
  cache = _open(directory, hold)
  cache = dataclasses.replace(
    cache, clips=tuple(by_path[c.path] for c in cache.clips)
  )
  if cache.bad_files and not skip_bad_files:
    # The cache was built with skip_bad_files=True; this run asked to stop.
    raise _bad_files_error(cache.bad_files)
  if cache.bad_files:
    log.warning(
      "%d bad file(s) were left out of the feature cache; see %s",
      len(cache.bad_files),
      directory / BAD_FILES_REPORT,
    )
  # Also when only loading: a build another process still read is left for
  # a later run to evict.
  cache_folders.evict_superseded(directory)
  if built:
    log.info(
      "feature cache: %d clips, %s in %s; the cache folder holds %s in all",
      len(cache.clips),
      cache_folders.megabytes(cache_folders.folder_bytes(directory)),
      directory,
      cache_folders.megabytes(cache_folders.folder_bytes(directory.parent)),
    )
  return cache


def load(directory):
  """Opens a built cache, checking that its index and frames agree."""
  directory = pathlib.Path(directory)
  hold = cache_folders.hold(directory)
  if hold is None:
    raise AeasdError(
      f"feature cache {directory}: no such cache (or another process"
      " removed it as superseded); expected a built cache folder"
    )
  return _open(directory, hold)


def _open(directory, hold):
  try:
    with open(directory / INDEX_FILE) as f:
      index = json.load(f)
  except (OSError, ValueError) as e:
    raise AeasdError(
      f"feature cache {directory}: unreadable index ({e});"
      " delete the folder to rebuild it"
    ) from None
  body = {k: v for k, v in index.items() if k != "checksum"}
  if index.get("checksum") != _checksum(body):
    raise AeasdError(
      f"feature cache {directory}: index checksum mismatch;"
      " delete the folder to rebuild it"
    )
  if body["key"] != directory.name:
    raise AeasdError(
      f"feature cache {directory}: index is for key"
      f" {body['key']}; delete the folder to rebuild it"
    )
  lengths = np.asarray(body["lengths"], np.int64)
  n_mels = body["n_mels"]
  total = int(lengths.sum())
  frames_path = directory / FRAMES_FILE
  expected_bytes = total * n_mels * 4
  if not frames_path.is_file() or frames_path.stat().st_size != expected_bytes:
    raise AeasdError(
      f"feature cache {frames_path}: expected {expected_bytes}"
      " bytes; delete the folder to rebuild it"
    )
  frames = (
    np.memmap(frames_path, np.float32, "r", shape=(total, n_mels))
    if total
    else np.zeros((0, n_mels), np.float32)
  )
  waves = None
  if body["audio"].get("waveforms"):
    samples = body["audio"]["clip_samples"]
    waves_path = directory / WAVES_FILE
    shape = (len(lengths), samples)
    if (
      not waves_path.is_file()
      or waves_path.stat().st_size != len(lengths) * samples * 4
    ):
      raise AeasdError(
        f"feature cache {waves_path}: expected {len(lengths) * samples * 4}"
        " bytes; delete the folder to rebuild it"
      )
    waves = (
      np.memmap(waves_path, np.float32, "r", shape=shape)
      if len(lengths)
      else np.zeros(shape, np.float32)
    )
  # Not concatenate([0], ...): that gives one offset for zero clips.
  offsets = np.cumsum(lengths) - lengths
  clips = tuple(dcase.Clip(**c) for c in body["clips"])
  return FeatureCache(
    directory,
    frames,
    clips,
    offsets,
    lengths,
    tuple(body["bad_files"]),
    tuple(body["digests"]),
    waves=waves,
    hold=hold,
  )


def _bad_files_error(bad):
  listing = "\n  ".join(bad)
  return AeasdError(
    f"{len(bad)} bad audio file(s); fix or remove them, or set"
    f" config.data.skip_bad_files=True to leave them out:\n  {listing}"
  )


def _checksum(body):
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _build(
  directory,
  clips,
  versions,
  feature_params,
  audio_params,
  skip_bad_files,
  num_workers,
  batch_size,
  batch_seconds,
  show_progress,
):
  """Computes all frames into a temporary folder, then renames it.

  Returns:
    The cache_folders.Hold on the finished cache, taken before it was visible.
  """
  directory.parent.mkdir(parents=True, exist_ok=True)
  cache_folders.remove_abandoned(directory.parent)
  tmp = (
    directory.parent
    / f"{cache_folders.TMP_PREFIX}{directory.name}-{os.getpid()}"
  )
  shutil.rmtree(tmp, ignore_errors=True)
  hold = None
  try:
    tmp.mkdir()
    hold = cache_folders.hold_new(tmp)
    kept, lengths, digests, bad = cache_compute.compute_frames(
      tmp / FRAMES_FILE,
      clips,
      feature_params,
      {k: audio_params[k] for k in ("resample", "channel")},
      num_workers,
      batch_size,
      batch_seconds,
      show_progress,
      clip_samples=audio_params.get("clip_samples"),
      waves_path=tmp / WAVES_FILE if audio_params.get("waveforms") else None,
    )
    _check_unchanged(clips, versions)
    if bad and not skip_bad_files:
      raise _bad_files_error(bad)
    if bad:
      (tmp / BAD_FILES_REPORT).write_text("\n".join(bad) + "\n")
    body = {
      "key": directory.name,
      "lineage": directory.name.split("-")[0],
      "version": FORMAT_VERSION,
      "n_mels": feature_params["n_mels"],
      "features": feature_params,
      "audio": audio_params,
      "clips": [dataclasses.asdict(c) for c in kept],
      "lengths": lengths,
      "digests": digests,
      "bad_files": bad,
    }
    with open(tmp / INDEX_FILE, "w") as f:
      json.dump({**body, "checksum": _checksum(body)}, f)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.replace(tmp, directory)
    except OSError:
      # Another process finished the same cache first; theirs is identical.
      if not directory.is_dir():
        raise
      hold.release()
      hold = cache_folders.hold(directory)
      if hold is None:
        raise AeasdError(
          f"feature cache {directory}: removed by another process as"
          " superseded while this one built it; expected the audio files"
          " to stay unchanged while a run starts; run again"
        ) from None
    return hold
  except OSError as e:
    raise AeasdError(
      f"cannot write the feature cache under {directory.parent}"
      f" ({e.strerror or e}); expected a writable folder with"
      " free space (config.data.cache_dir)"
    ) from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _check_unchanged(clips, versions):
  """Refuses frames of files that changed while they were read.

  Their frames could be of either version, under the key of the old one.
  """
  changed = [
    c.path
    for c, version in zip(clips, versions)
    if _file_version(c.path) != version
  ]
  if changed:
    raise AeasdError(
      f"{changed[0]}: changed while the feature cache was built"
      f" ({len(changed)} file(s) changed); expected the audio files to"
      " stay unchanged during a build; run again to build from the new"
      " files"
    )
