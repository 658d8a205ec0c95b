"""One run per workdir: a lock file that names its holder and can go stale.

A second train.py on a workdir would resume from the first one's unfinished
checkpoints and overwrite its results, so it is refused. The lock of a run
that died without cleaning up is taken over: on the holder's host once its
process is gone, from another host (a shared filesystem) once the holder has
stopped refreshing the file's mtime.
"""

import contextlib
import datetime
import json
import logging
import math
import numbers
import os
import secrets
import socket
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from aeasd_jax.workdir import file_io
from aeasd_jax.errors import AeasdError

_TRIES = 5  # Takeovers raced by other runs before giving up.
_MESSAGE_BYTES = 2048  # Room for process 0's error when broadcast.
log = logging.getLogger(__name__)


@contextlib.contextmanager
def hold(workdir, stale_after_s, name="train.py"):
  """Holds the workdir's lock for the block; refuses a workdir in use.

  Only process 0 takes the lock; in a multi-process run every process then
  raises the error process 0 got, so none waits for the others.

  Args:
    workdir: the run's layout.Workdir, whose folder is created if needed.
    stale_after_s: config.workdir_lock_stale_s. The lock's mtime is refreshed
      every quarter of it; a lock from another host left unrefreshed this
      long belongs to a run that is gone.
    name: what the lock says holds the workdir, for the error of a second run.

  Raises:
    AeasdError: another run holds the workdir, or it cannot be written.
  """
  if not (
    isinstance(stale_after_s, numbers.Real)
    and not isinstance(stale_after_s, bool)
    and math.isfinite(stale_after_s)
    and stale_after_s > 0
  ):
    raise AeasdError(
      f"config.workdir_lock_stale_s={stale_after_s!r}: expected"
      " a positive number of seconds"
    )
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      path = workdir.make().lock_file
      lock = _Lock(path, _acquire(path, stale_after_s, name), stale_after_s)
    except Exception as e:  # pylint: disable=broad-except
      error = e  # Raised below, once the other processes know of it.
  _raise_on_every_process(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def _raise_on_every_process(error):
  if jax.process_count() > 1:
    message = np.zeros(_MESSAGE_BYTES, np.int32)
    if error is not None:
      text = str(error) if isinstance(error, AeasdError) else repr(error)
      encoded = text.encode()[:_MESSAGE_BYTES]
      message[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    message = np.asarray(multihost_utils.broadcast_one_to_all(message))
    text = (
      message.astype(np.uint8).tobytes().rstrip(b"\0").decode(errors="replace")
    )
    if text and error is None:
      raise AeasdError(text)
  if error is not None:
    raise error


def _acquire(path, stale_after_s, name):
  """Creates the lock file, taking over a stale one; returns its fd."""
  record = json.dumps(
    {
      "name": name,
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "pid_space": _pid_space(),
      "start": _start_time(os.getpid()),
      "started_at": datetime.datetime.now()
      .astimezone()
      .isoformat(timespec="seconds"),
    }
  ).encode()
  moved_aside = []
  try:
    for _ in range(_TRIES):
      try:
        return _create(path, record)
      except FileExistsError:
        pass
      try:
        seen = _Seen(path)
      except FileNotFoundError:
        continue  # Released meanwhile.
      reason = _why_stale(seen, stale_after_s)
      if reason is None:
        raise AeasdError(_in_use(path, seen, stale_after_s))
      log.warning(
        "workdir %s: taking over the lock %s, since %s",
        path.parent,
        path,
        reason,
      )
      moved_aside.append(_move_aside(path, seen))
  except OSError as e:
    raise file_io.write_error(path, e) from None
  finally:
    # Only now, with the new lock created: an inode freed earlier could be
    # reused for it and pass another taker's same-file check.
    for moved in filter(None, moved_aside):
      with contextlib.suppress(OSError):
        os.unlink(moved)
  raise AeasdError(
    f"workdir {path.parent}: its lock {path} kept changing"
    f" over {_TRIES} tries; expected one run to start at a"
    " time. Retry"
  )


def _create(path, record):
  # O_EXCL creation is atomic, on NFS too (v3 and later).
  fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
  try:
    view = memoryview(record)
    while view:
      view = view[os.write(fd, view) :]
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    os.unlink(path)
    raise
  return fd


class _Seen:
  """A lock file as read: its identity, bytes, age and parsed holder."""

  def __init__(self, path):
    with open(path, "rb") as f:  # One open, so the bytes match the stat.
      self.stat = os.fstat(f.fileno())
      self.data = f.read()
    self.age = time.time() - self.stat.st_mtime
    try:
      self.holder = json.loads(self.data)
      pid = self.holder["pid"]
      # A pid of 0 or -1 would make os.kill signal whole process groups.
      if not (isinstance(pid, int) and pid > 0):
        raise ValueError(pid)
    except (ValueError, KeyError, TypeError):
      self.holder = None  # Being written by a run just starting, or damaged.


def _why_stale(seen, stale_after_s):
  """Why the lock's holder is gone, or None while it may still be running."""
  holder = seen.holder
  if holder is not None and _on_this_host(holder):
    if _alive(holder["pid"], holder.get("start")):
      return None
    return f"its holder, pid {holder['pid']} on this host, has exited"
  # The age compares this host's clock with the file server's, which must
  # agree to well within stale_after_s (as NTP keeps them).
  if seen.age > stale_after_s:
    return (
      f"it was last refreshed {seen.age:.0f}s ago"
      f" (config.workdir_lock_stale_s={stale_after_s:g})"
    )
  return None


def _on_this_host(holder):
  """Whether the holder's pid means a process this one can look up."""
  # The host name alone is not enough: containers on one host can share it
  # while each has its own pid numbers.
  return (holder.get("host"), holder.get("pid_space")) == (
    socket.gethostname(),
    _pid_space(),
  )


def _alive(pid, start):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Another user's process, alive.
  now = _proc_stat(pid)
  if now is None:  # No /proc, or one that hides other users' processes.
    return True
  state, started = now
  # A zombie has exited; another start time means the pid was reused.
  return state != "Z" and (start is None or started == start)


def _proc_stat(pid):
  """(state, start time in clock ticks since boot) from /proc, or None."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      # The command name may hold spaces and parentheses; it ends at the
      # last ")". Fields 3 (state) and 22 (start time) follow it.
      fields = f.read().rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[19])
  except (OSError, IndexError, ValueError):
    return None


def _start_time(pid):
  stat = _proc_stat(pid)
  return None if stat is None else stat[1]


def _pid_space():
  """Names this boot and pid namespace, where a pid means one process."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      boot = f.read().strip()
    return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
  except OSError:
    return None


def _move_aside(path, seen):
  """Renames the stale lock away; returns its new name, or None.

  Of several runs taking it over, only one rename finds it: the others find
  nothing, or the lock the first one created, which they put back.
  """
  aside = path.with_name(f"{path.name}.stale-{secrets.token_hex(6)}")
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return None
  moved = os.stat(aside)
  if (moved.st_ino, moved.st_dev) != (seen.stat.st_ino, seen.stat.st_dev) or (
    aside.read_bytes() != seen.data
  ):
    with contextlib.suppress(FileExistsError):
      os.link(aside, path)
  return aside


class _Lock:
  """A held lock: its open file, and the thread refreshing its mtime."""

  def __init__(self, path, fd, stale_after_s):
    self.path, self.fd = path, fd
    self.stop = threading.Event()
    self.thread = threading.Thread(
      target=self._heartbeat,
      args=(stale_after_s / 4,),
      name="workdir-lock-heartbeat",
      daemon=True,
    )
    self.thread.start()

  def _heartbeat(self, period):
    while not self.stop.wait(period):
      if not self._ours():
        log.warning(
          "workdir %s: its lock %s was taken over by another run;"
          " expected it to stay with this one",
          self.path.parent,
          self.path,
        )
        return
      try:
        # Through the fd: a path could by now name another run's lock.
        os.utime(self.fd if os.utime in os.supports_fd else self.path)
      except OSError as e:
        log.warning(
          "workdir %s: cannot refresh its lock %s (%s)",
          self.path.parent,
          self.path,
          e.strerror or e,
        )

  def _ours(self):
    try:
      now = os.stat(self.path)
    except FileNotFoundError:
      return False
    held = os.fstat(self.fd)
    return (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)

  def release(self):
    self.stop.set()
    self.thread.join()
    try:
      if self._ours():
        os.unlink(self.path)
    except OSError as e:
      log.warning(
        "workdir %s: cannot remove its lock %s (%s)",
        self.path.parent,
        self.path,
        e.strerror or e,
      )
    finally:
      os.close(self.fd)


def _in_use(path, seen, stale_after_s):
  holder = seen.holder
  if holder is None:
    return (
      f"workdir {path.parent} is in use: its lock {path} was written"
      f" {seen.age:.0f}s ago by a run that is starting, or is damaged;"
      " expected one run per workdir. If no run uses it, delete"
      f" {path}"
    )
  who = (
    f"workdir {path.parent} is in use by {holder.get('name', 'a run')}"
    f" (pid {holder['pid']} on host {holder.get('host')}, since"
    f" {holder.get('started_at')}); expected one run per workdir."
  )
  if _on_this_host(holder):
    return f"{who} Wait for it to finish, stop it, or use another --workdir"
  return (
    f"{who} If that run is gone, its lock is taken over"
    f" {max(stale_after_s - seen.age, 0):.0f}s from now, or delete"
    f" {path}"
  )
