"""The entry points as a user runs them: timing line, compile cache, errors.

Bad input must end in one `error: ...` line and exit code 2, never a bare
traceback.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from aeasd_jax import metric_log

REPO = pathlib.Path(__file__).parents[1]


def _run(script, *args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, str(REPO / script), *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=300,
  )
  if check and result.returncode:
    raise AssertionError(f"{script} failed:\n{result.stderr[-3000:]}")
  return result


def _tiny_flags(root, cache):
  return [
    f"--config={REPO / 'configs' / 'idnn.py'}",
    f"--config.data.root={root}",
    f"--config.data.cache_dir={cache}",
    "--config.features.n_mels=16",
    "--config.model.hidden=16",
    "--config.model.depth=1",
    "--config.model.bottleneck=4",
    "--config.train.epochs=2",
    "--config.train.batch_size=64",
    "--config.score.batch_windows=256",
  ]


@pytest.fixture(scope="module")
def cli_runs(tiny_root, tmp_path_factory):
  """Two identical trainings into two workdirs, sharing a compile cache."""
  base = tmp_path_factory.mktemp("cli")
  flags = _tiny_flags(tiny_root, base / "cache")
  first = _run("train.py", *flags, f"--workdir={base / 'first'}")
  second = _run("train.py", *flags, f"--workdir={base / 'second'}")
  return base, first, second


def _timing(workdir):
  return [r for r in metric_log.read_records(workdir) if "timing_s" in r][-1]


def test_every_run_prints_the_time_breakdown(cli_runs):
  _, first, _ = cli_runs
  time_line = [line for line in first.stderr.splitlines() if " time: " in line]
  assert len(time_line) == 1
  for phase in ("features", "compile", "train", "checkpoint", "total"):
    assert phase in time_line[0]


def test_second_identical_run_compiles_nothing_new(cli_runs):
  base, _, _ = cli_runs
  assert _timing(base / "first")["compile"] == "cold"
  assert _timing(base / "second")["compile"] == "warm"


def test_evaluate_prints_the_table(cli_runs):
  base, _, _ = cli_runs
  result = _run("evaluate.py", f"--workdir={base / 'second'}")
  assert "AUC(%) (pAUC(%))" in result.stdout
  assert (base / "second" / "results" / "result.csv").exists()


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--config.data.root=/no/such/folder", "config.data.root=/no/such/folder"),
    ("--config.train.batch_size=0", "config.train.batch_size=0"),
    ("--config.model.name=GAN", "config.model.name='GAN'"),
    ("--config.train.batch_size=100000", "fewer than config.train.batch_size"),
  ],
)
def test_train_errors_are_one_line(cli_runs, flag, message, tmp_path):
  base, _, _ = cli_runs
  flags = _tiny_flags(base / "unused", base / "cache")
  if "data.root" not in flag:
    flags = _tiny_flags(_root_of(base / "first"), base / "cache")
  result = _run("train.py", *flags, flag, f"--workdir={tmp_path}", check=False)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert message in result.stderr


def _root_of(workdir):
  return json.loads((workdir / "config.json").read_text())["data"]["root"]


def test_wrong_type_on_the_command_line_is_a_flag_error(cli_runs, tmp_path):
  base, _, _ = cli_runs
  flags = _tiny_flags(_root_of(base / "first"), base / "cache")
  result = _run(
    "train.py",
    *flags,
    "--config.train.epochs=ten",
    f"--workdir={tmp_path}",
    check=False,
  )
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert "epochs" in result.stderr


def test_evaluate_errors_are_one_line(tmp_path):
  result = _run("evaluate.py", f"--workdir={tmp_path / 'missing'}", check=False)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "config.json" in result.stderr.strip().splitlines()[-1]
