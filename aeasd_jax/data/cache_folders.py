"""When a feature-cache folder may be deleted, and deleting it safely.

Every process reading a cache holds a shared flock on its lock file; a build
evicts the builds it supersedes only under an exclusive one.
"""

import fcntl
import logging
import os
import shutil
import threading

from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)

# Every process using a cache holds a shared flock on this file; eviction
# needs an exclusive one.
LOCK_FILE = "lock"
TMP_PREFIX = ".tmp-"
EVICT_PREFIX = ".evict-"


# The lock files this process holds, by (st_dev, st_ino): [fds, holders].
# One fd per file, shared by its holders and closed by the last: NFS
# emulates flock with POSIX locks, which belong to the process and are all
# dropped when any fd of the file is closed.
_held = {}
_held_lock = threading.RLock()


class Hold:
  """A shared flock on a cache's lock file: while held, nobody evicts it."""

  def __init__(self, file_id):
    self._file_id = file_id

  def release(self):
    with _held_lock:
      if self._file_id is None:
        return
      entry = _held[self._file_id]
      entry[1] -= 1
      if not entry[1]:
        del _held[self._file_id]
        for fd in entry[0]:
          os.close(fd)
      self._file_id = None

  def __del__(self):
    try:
      self.release()
    except (TypeError, AttributeError):
      pass  # At exit, after the modules were torn down; the fd goes too.


def _file_id(st):
  return st.st_dev, st.st_ino


def _held_id(path):
  """The file id of `path` if this process holds it; else None."""
  try:
    file_id = _file_id(os.stat(path))
  except OSError:
    return None
  return file_id if file_id in _held else None


def _register(fd):
  file_id = _file_id(os.fstat(fd))
  with _held_lock:
    # Two threads may open the same file at once; both fds stay open.
    fds, holders = _held.get(file_id, ([], 0))
    _held[file_id] = [[*fds, fd], holders + 1]
  return Hold(file_id)


def hold(directory):
  """A Hold on the cache in `directory`, or None where there is none.

  None too for a cache being evicted: it is about to be gone.
  """
  lock_path = directory / LOCK_FILE
  with _held_lock:
    file_id = _held_id(lock_path)
    if file_id:
      _held[file_id][1] += 1
      return Hold(file_id)
  try:
    fd = os.open(lock_path, os.O_RDONLY)
  except FileNotFoundError:
    if directory.is_dir():
      raise AeasdError(
        f"feature cache {directory}: no {LOCK_FILE} file; delete the"
        " folder to rebuild it"
      ) from None
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  except OSError:
    # No flock on this filesystem (some FUSE mounts): read it unlocked;
    # eviction, which needs the lock too, then never removes anything here.
    pass
  # An evictor renames the folder away while it holds the exclusive lock.
  if not _same_file(fd, lock_path):
    os.close(fd)
    return None
  return _register(fd)


def hold_new(folder):
  """Creates the lock file of a cache being built in `folder` and holds it.

  Held before the folder is renamed into place, so no process can evict
  the cache between its rename and its first use.
  """
  fd = os.open(folder / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH)
  except OSError:
    pass  # No flock on this filesystem; see hold.
  return _register(fd)


def _same_file(fd, path):
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def evict_superseded(directory):
  """Deletes the other builds of this cache's lineage that nobody reads."""
  lineage = directory.name.split("-")[0]
  for other in sorted(directory.parent.glob(f"{lineage}-*")):
    if other.name != directory.name:
      _evict(other)
  remove_abandoned(directory.parent)


def _evict(other):
  if _held_id(other / LOCK_FILE):
    # Not opened here: closing another fd of it would drop a POSIX lock.
    log.info("feature cache: kept superseded %s: this process uses it", other)
    return
  try:
    fd = os.open(other / LOCK_FILE, os.O_RDONLY)
  except OSError:
    return  # Gone already, or not a folder this code built.
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.info(
        "feature cache: kept superseded %s: another process is using it",
        other,
      )
      return
    except OSError:
      return  # No flock here: there is no telling who reads it.
    if not _same_file(fd, other / LOCK_FILE):
      return  # Another process evicted it first.
    size = folder_bytes(other)
    # Renamed while locked, so no process can open it from here on.
    doomed = other.with_name(f"{EVICT_PREFIX}{other.name}-{os.getpid()}")
    os.rename(other, doomed)
  except OSError as e:
    log.warning(
      "feature cache: cannot remove superseded %s (%s)",
      other,
      e.strerror or e,
    )
    return
  finally:
    os.close(fd)
  shutil.rmtree(doomed, ignore_errors=True)
  log.info(
    "feature cache: removed superseded %s, freeing %s",
    other,
    megabytes(size),
  )


def folder_bytes(folder):
  total = 0
  for parent, _, files in os.walk(folder):
    for name in files:
      try:
        total += os.lstat(os.path.join(parent, name)).st_size
      except OSError:
        pass  # Removed while counting.
  return total


def megabytes(size):
  return f"{size / 1e6:.1f} MB"


def remove_abandoned(cache_dir):
  """Deletes the temporary folders of builds and evictions that were killed.

  A build's folder is its own while its process lives and holds its lock.
  """
  for tmp in [
    *cache_dir.glob(f"{TMP_PREFIX}*"),
    *cache_dir.glob(f"{EVICT_PREFIX}*"),
  ]:
    try:
      os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
      continue
    except ProcessLookupError:
      pass
    except (ValueError, PermissionError):
      continue  # Not ours to judge: a foreign name or another user's process.
    if tmp.name.startswith(TMP_PREFIX) and _in_use(tmp):
      continue  # A process in another PID namespace (a container) builds it.
    shutil.rmtree(tmp, ignore_errors=True)


def _in_use(folder):
  try:
    fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  except OSError:
    return False
  finally:
    os.close(fd)
