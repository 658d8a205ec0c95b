"""The workdir lock: one run per workdir, stale locks taken over."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from aeasd_jax.workdir import lock
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
  # runtime.configure_logging stops aeasd_jax records from reaching caplog.
  monkeypatch.setattr(logging.getLogger("aeasd_jax"), "propagate", True)


def _lock(workdir):
  return layout.Workdir(workdir).lock_file


def _write_lock(workdir, age_s=0.0, **holder):
  holder = {
    "name": "train.py",
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "pid_space": lock._pid_space(),
    "start": lock._start_time(os.getpid()),
    "started_at": "2026-01-02T03:04:05+00:00",
    **holder,
  }
  _lock(workdir).write_text(json.dumps(holder))
  mtime = time.time() - age_s
  os.utime(_lock(workdir), (mtime, mtime))


def _heartbeats():
  return [
    t for t in threading.enumerate() if t.name == "workdir-lock-heartbeat"
  ]


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
  with lock.hold(layout.Workdir(tmp_path), 60.0):
    holder = json.loads(_lock(tmp_path).read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(
      AeasdError,
      match=(
        rf"workdir {tmp_path} is in use by train.py \(pid {os.getpid()} on"
        rf" host {socket.gethostname()}, since .*\); expected one run per"
        " workdir"
      ),
    ):
      with lock.hold(layout.Workdir(tmp_path), 60.0):
        pass
    assert _lock(tmp_path).exists()  # The refused run left it alone.
  assert not _lock(tmp_path).exists()
  assert not _heartbeats()


def test_the_lock_is_released_on_an_exception(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      raise KeyboardInterrupt
  assert not _lock(tmp_path).exists()
  assert not _heartbeats()
  with lock.hold(layout.Workdir(tmp_path), 60.0):
    pass


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
  child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"],
    capture_output=True,
    text=True,
    check=True,
  )
  _write_lock(tmp_path, pid=int(child.stdout), start=None)
  with caplog.at_level(logging.WARNING):
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      assert json.loads(_lock(tmp_path).read_text())["pid"] == os.getpid()
  assert f"pid {int(child.stdout)} on this host, has exited" in caplog.text


def test_a_reused_pid_does_not_keep_a_lock(tmp_path, caplog):
  # This process's pid, but the holder started at another time.
  _write_lock(tmp_path, start=lock._start_time(os.getpid()) - 1)
  with caplog.at_level(logging.WARNING):
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      pass
  assert "has exited" in caplog.text


def test_a_lock_from_another_host_is_kept_while_fresh(tmp_path, caplog):
  _write_lock(tmp_path, age_s=10.0, host="node7", pid=4242, pid_space="x")
  with pytest.raises(
    AeasdError,
    match=(
      r"in use by train.py \(pid 4242 on host node7, since"
      r" 2026-01-02T03:04:05\+00:00\); expected one run per workdir. If that"
      rf" run is gone, its lock is taken over \d+s from now, or delete"
      rf" {_lock(tmp_path)}"
    ),
  ):
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      pass
  _write_lock(tmp_path, age_s=61.0, host="node7", pid=4242, pid_space="x")
  with caplog.at_level(logging.WARNING):
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      assert json.loads(_lock(tmp_path).read_text())["pid"] == os.getpid()
  assert "last refreshed 61s ago" in caplog.text
  assert not list(tmp_path.iterdir())


def test_an_unreadable_lock_is_judged_by_its_age(tmp_path):
  _lock(tmp_path).write_text("")  # A run killed between create and write.
  with pytest.raises(
    AeasdError, match="by a run that is starting, or is damaged"
  ):
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      pass
  os.utime(_lock(tmp_path), (time.time() - 120, time.time() - 120))
  with lock.hold(layout.Workdir(tmp_path), 60.0):
    pass


def test_the_heartbeat_refreshes_the_mtime(tmp_path):
  with lock.hold(layout.Workdir(tmp_path), 0.2):
    old = time.time() - 100
    os.utime(_lock(tmp_path), (old, old))
    time.sleep(0.3)
    assert os.stat(_lock(tmp_path)).st_mtime > old + 90
    assert len(_heartbeats()) == 1
  assert not _heartbeats()


def test_a_lock_taken_over_meanwhile_is_not_removed(tmp_path):
  with lock.hold(layout.Workdir(tmp_path), 60.0):
    os.unlink(_lock(tmp_path))
    _write_lock(tmp_path, host="node7", pid_space="x")
  assert json.loads(_lock(tmp_path).read_text())["host"] == "node7"


def test_a_racing_takeover_puts_a_fresh_lock_back(tmp_path):
  _write_lock(tmp_path, age_s=120.0, host="node7", pid=1, pid_space="x")
  stale = lock._Seen(_lock(tmp_path))
  # Another run took it over first and now holds a fresh lock.
  os.unlink(_lock(tmp_path))
  _write_lock(tmp_path, host="node8", pid=2, pid_space="y")
  aside = lock._move_aside(_lock(tmp_path), stale)
  os.unlink(aside)
  assert json.loads(_lock(tmp_path).read_text())["host"] == "node8"


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "60", True])
def test_the_stale_setting_must_be_a_positive_number(tmp_path, value):
  with pytest.raises(
    AeasdError,
    match=r"config.workdir_lock_stale_s=.*:"
    " expected a positive number of seconds",
  ):
    with lock.hold(layout.Workdir(tmp_path), value):
      pass


def test_other_processes_raise_what_process_0_got(tmp_path, monkeypatch):
  message = "workdir w is in use by train.py (pid 1 on host h, since t)"
  sent = np.zeros(lock._MESSAGE_BYTES, np.int32)
  sent[: len(message)] = np.frombuffer(message.encode(), np.uint8)
  monkeypatch.setattr(lock.jax, "process_count", lambda: 2)
  monkeypatch.setattr(lock.jax, "process_index", lambda: 1)
  monkeypatch.setattr(
    lock.multihost_utils, "broadcast_one_to_all", lambda x: sent
  )
  with pytest.raises(AeasdError) as raised:
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      pass
  assert str(raised.value) == message
  assert not _lock(tmp_path).exists()  # Only process 0 takes the lock.
  monkeypatch.setattr(
    lock.multihost_utils, "broadcast_one_to_all", np.zeros_like
  )
  with lock.hold(layout.Workdir(tmp_path), 60.0):  # Process 0 got the lock.
    pass


def test_process_0_shares_its_error(tmp_path, monkeypatch):
  _write_lock(tmp_path)
  shared = []
  monkeypatch.setattr(lock.jax, "process_count", lambda: 2)
  monkeypatch.setattr(
    lock.multihost_utils,
    "broadcast_one_to_all",
    lambda x: shared.append(x) or x,
  )
  with pytest.raises(AeasdError) as raised:
    with lock.hold(layout.Workdir(tmp_path), 60.0):
      pass
  text = shared[0].astype(np.uint8).tobytes().rstrip(b"\0").decode()
  assert text == str(raised.value)


_HOLDER = textwrap.dedent("""
    import sys, time
    from aeasd_jax.workdir import layout, lock
    with lock.hold(layout.Workdir(sys.argv[1]), 60.0):
      print("held", flush=True)
      time.sleep(300)
""")


@pytest.mark.parametrize("reaped", [True, False])
def test_a_killed_holder_process_is_taken_over(tmp_path, caplog, reaped):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(tmp_path)],
    cwd=repo,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(
      AeasdError,
      match=(
        rf"in use by train.py \(pid {holder.pid} on host"
        rf" {socket.gethostname()}, .*Wait for it to finish"
      ),
    ):
      with lock.hold(layout.Workdir(tmp_path), 60.0):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    if reaped:
      holder.wait(timeout=60)
    else:  # Until its parent waits for it, a killed process is a zombie.
      while lock._proc_stat(holder.pid)[0] != "Z":
        time.sleep(0.01)
    assert _lock(tmp_path).exists()  # SIGKILL left it behind.
    with caplog.at_level(logging.WARNING):
      with lock.hold(layout.Workdir(tmp_path), 60.0):
        pass
  finally:
    holder.kill()
    holder.wait(timeout=60)
    holder.stdout.close()
  assert f"pid {holder.pid} on this host, has exited" in caplog.text
