"""The entry points as a user runs them: timing line, compile cache, errors.

Bad input must end in one `error: ...` line and exit code 2, never a bare
traceback.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import soundfile

from aeasd_jax.evaluation import evaluate
from aeasd_jax.workdir import metric_log
from aeasd_jax.evaluation import recordings
from aeasd_jax.training import run_identity
from aeasd_jax import synth
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout

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
  return [
    r
    for r in metric_log.read_records(layout.Workdir(workdir).metrics_file)
    if "timing_s" in r
  ][-1]


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
  assert (base / "second" / "results" / "mse" / "result.csv").exists()


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


@pytest.fixture
def moved_run(cli_runs, tiny_root, tmp_path):
  """A copy of a trained workdir whose data has moved: (workdir, new root).

  Its config.json names the data's old place, which no longer exists.
  """
  base, _, _ = cli_runs
  workdir = shutil.copytree(base / "second", tmp_path / "run")
  root = shutil.copytree(tiny_root, tmp_path / "moved")
  config = json.loads((workdir / "config.json").read_text())
  config["data"]["root"] = str(tmp_path / "gone")
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir, root


def test_evaluate_names_the_flag_for_data_that_moved(moved_run):
  workdir, _ = moved_run
  result = _run("evaluate.py", f"--workdir={workdir}", check=False)
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: {workdir / 'config.json'}: data.root=")
  assert line.endswith(
    "use --data_root=PATH to point evaluate.py at the data's new location"
  )


def test_evaluate_reads_moved_data_without_rewriting_the_workdir(moved_run):
  workdir, root = moved_run
  before = (workdir / "config.json").read_text()
  report = evaluate.evaluate(workdir, data_root=str(root))
  assert report["dev"]
  assert (workdir / "config.json").read_text() == before


def test_wav_fits_thresholds_on_moved_data(moved_run, capsys):
  workdir, root = moved_run
  layout.Workdir(workdir).thresholds_file.unlink()
  wav = next((root / "dev_data" / "fan" / "test").glob("*.wav"))
  with pytest.raises(AeasdError, match=r"use --data_root=PATH"):
    recordings.score_recordings(workdir, wav, machine_type="fan")
  (row,) = recordings.score_recordings(
    workdir, wav, machine_type="fan", data_root=str(root)
  )
  assert "score" in row
  assert layout.Workdir(workdir).thresholds_file.exists()
  capsys.readouterr()


def test_data_root_of_other_data_is_refused(moved_run, tmp_path):
  workdir, _ = moved_run
  other = synth.generate(
    tmp_path / "other", seed=1, clips_per_id=4, seconds=1.0
  )
  with pytest.raises(AeasdError, match="trained on other data"):
    evaluate.evaluate(workdir, data_root=str(other))
  with pytest.raises(AeasdError, match=r"--data_root=.*: no such folder"):
    evaluate.evaluate(workdir, data_root=str(tmp_path / "nowhere"))


def test_data_errors_say_where_evaluate_reads_the_settings(moved_run):
  workdir, root = moved_run
  bad = next((root / "dev_data" / "fan" / "train").glob("*.wav"))
  bad.write_bytes(b"not audio")
  config = run_identity.load_config(workdir)
  with pytest.raises(AeasdError) as error:
    evaluate.load_data(layout.Workdir(workdir), config, str(root))
  assert "config.data.skip_bad_files=True" in str(error.value)
  assert f"from {workdir / 'config.json'}: change them there" in str(
    error.value
  )


def test_wav_at_another_rate_gets_advice_evaluate_can_follow(
  cli_runs, tiny_root, tmp_path, capsys
):
  base, _, _ = cli_runs
  source = next((tiny_root / "dev_data" / "fan" / "test").glob("*.wav"))
  samples, rate = soundfile.read(source)
  assert rate == 16000
  folder = tmp_path / "recordings"
  folder.mkdir()
  shutil.copy(source, folder / source.name)
  soundfile.write(folder / f"44k_{source.name}", samples, 44100)
  rows = recordings.score_recordings(
    base / "second", folder, machine_type="fan"
  )
  (error,) = [r["error"] for r in rows if "error" in r]
  assert error.endswith(
    "sample rate 44100 Hz, expected 16000 Hz (resample it to 16000 Hz first"
    " (e.g. sox in.wav -r 16000 out.wav), or retrain with"
    " --config.data.resample=True)"
  )
  capsys.readouterr()


def test_evaluate_refuses_a_results_file_in_one_line(
  cli_runs, tiny_root, tmp_path
):
  base, _, _ = cli_runs
  workdir = shutil.copytree(base / "second", tmp_path / "run")
  shutil.rmtree(workdir / "results", ignore_errors=True)
  (workdir / "results").write_text("")
  result = _run(
    "evaluate.py",
    f"--workdir={workdir}",
    f"--eval_ground_truth={tiny_root / 'eval_data_list.csv'}",
    "--partial_ground_truth",
    check=False,
  )
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: {workdir / 'results'}: a file, not a folder; expected the"
    " folder of evaluate.py's results (move or delete the file)"
  )
