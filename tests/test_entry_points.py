"""The entry points' flags: only what they act on, paths as a shell gives them.

Errors are checked as the user sees them: one `error: ...` line, exit code 2.
The compile telemetry is checked against what JAX's cache actually did.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from aeasd_jax import runtime
from aeasd_jax.errors import AeasdError

REPO = pathlib.Path(__file__).parents[1]


def _run(script, *args, env=None, cwd=REPO):
  return subprocess.run(
    [sys.executable, str(REPO / script), *args],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
    cwd=cwd,
    timeout=300,
  )


def _error_line(result):
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
  "script,args,line",
  [
    (
      "train.py",
      ["configs/idnn.py"],
      "error: unexpected argument 'configs/idnn.py'; expected flags only"
      " (did you mean --config=configs/idnn.py?)",
    ),
    (
      "train.py",
      ["--config=configs/idnn.py", "--workdir", "runs/x", "stray"],
      "error: unexpected argument 'stray'; expected flags only",
    ),
    (
      "evaluate.py",
      ["--workdir=runs/idnn", "--", "--plots"],
      "error: unexpected argument '--plots'; expected flags only",
    ),
  ],
)
def test_arguments_that_are_not_flags_are_refused(script, args, line):
  assert _error_line(_run(script, *args)) == line


def test_a_workdir_given_without_its_flag_is_named(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  line = _error_line(_run("evaluate.py", str(tmp_path)))
  assert line.endswith(f"(did you mean --workdir={tmp_path}?)")


@pytest.mark.parametrize(
  "flags,message",
  [
    ((None, 4, None), "--num_processes=4 without --coordinator_address"),
    ((None, None, 2), "--process_id=2 without --coordinator_address"),
    ((None, 0, None), "--num_processes=0: expected"),
    (("host0:1234", 0, 0), "--num_processes=0: expected"),
    (("host0:1234", 4, 4), "--process_id=4: expected this process's index,"),
    (("host0:1234", 4, -1), "--process_id=-1: expected"),
    (("host0:1234", None, -1), "--process_id=-1: expected"),
  ],
)
def test_multi_host_flags_are_checked(flags, message):
  with pytest.raises(AeasdError, match=message):
    runtime.initialize_distributed(*flags)


@pytest.mark.parametrize("flags", [(None, None, None), (None, 1, 0)])
def test_one_process_needs_no_coordinator(flags):
  runtime.initialize_distributed(*flags)  # Nothing to join; no error.


def test_train_reports_a_bad_multi_host_flag_in_one_line(tmp_path):
  result = _run(
    "train.py",
    "--config=configs/idnn.py",
    "--config.data.root=/no/such/folder",
    "--num_processes=4",
    f"--workdir={tmp_path}",
  )
  assert "--num_processes=4 without --coordinator_address" in (
    _error_line(result)
  )


def test_tilde_in_a_path_flag_is_the_home_folder(tmp_path):
  home = tmp_path / "home"
  home.mkdir()
  result = _run("evaluate.py", "--workdir=~/runs/idnn", env={"HOME": str(home)})
  assert f"{home}/runs/idnn/config.json" in _error_line(result)


# _compile_while_loading with a stand-in trainer: one small program to compile
# and nothing to load. Run in a fresh process, since JAX sets its persistent
# cache up once per process.
_COMPILE_REPORT = textwrap.dedent(
  """
  import sys
  import jax
  import jax.numpy as jnp
  from aeasd_jax.workdir import metric_log
  from aeasd_jax.training import train
  jax.config.update("jax_compilation_cache_dir", sys.argv[1])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  class Trainer:
    def compile(self):
      jax.jit(lambda x: jnp.sin(x) * 3).lower(jnp.ones(7)).compile()

    def load(self):
      pass

  timer = metric_log.PhaseTimer()
  train._compile_while_loading(Trainer(), timer)
  print(timer.notes["compile"].split(",")[0])
  """
)


def _compile_report(cache_dir):
  result = subprocess.run(
    [sys.executable, "-c", _COMPILE_REPORT, str(cache_dir)],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.split()[-1]


def test_compile_is_warm_only_when_the_cache_served_it(tmp_path):
  assert _compile_report(tmp_path / "cache") == "cold"
  assert _compile_report(tmp_path / "cache") == "warm"


def test_compile_with_an_unwritable_cache_is_cold(tmp_path):
  # Nothing can be created under a regular file, even by root.
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert _compile_report(blocker / "cache") == "cold"
  assert _compile_report(blocker / "cache") == "cold"
