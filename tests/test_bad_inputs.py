"""Every bad input and fault of the red-team passes, as a table.

Each case sets up one problem and runs the library call an entry point runs,
through runtime.run as train.py and evaluate.py do. It must end with the
expected exit code (2: one `error:` line; 0: handled with a warning) and
a message naming the file or setting, never a traceback.
"""

import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable

import csv
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers
from aeasd_jax.data import cache
from aeasd_jax.evaluation import evaluate
from aeasd_jax.training import interrupts
from aeasd_jax.workdir import metric_log
from aeasd_jax.evaluation import recordings
from aeasd_jax import runtime
from aeasd_jax.training import steps
from aeasd_jax.training import train
from aeasd_jax.workdir import lock
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout

REPO = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def trained(tiny_root, session_cache_dir, tmp_path_factory):
  """A finished tiny run; cases damage copies of it."""
  config = helpers.tiny_config(tiny_root, session_cache_dir)
  workdir = tmp_path_factory.mktemp("bad_inputs") / "run"
  train.train_and_evaluate(config, workdir)
  return workdir


@dataclasses.dataclass
class Context:
  """What a case may use: a fresh config, workdir copy and dataset copy."""

  config: object
  tmp: pathlib.Path
  trained: pathlib.Path
  monkeypatch: pytest.MonkeyPatch
  stack: contextlib.ExitStack  # Closed after the case.

  def copy_of_trained(self):
    target = self.tmp / "copy"
    shutil.copytree(self.trained, target)
    return target

  def copy_of_data(self):
    return _private_data(self.config, self.tmp)


def _private_data(config, tmp):
  """Points config at a private copy of its dataset, free to damage."""
  root = tmp / "data"
  shutil.copytree(config.data.root, root)
  config.data.root = str(root)
  return root


@dataclasses.dataclass
class Case:
  name: str
  run: Callable  # Context -> the call an entry point makes.
  code: int
  message: str  # A fragment of the printed error or logged warning.


def _train(ctx):
  return lambda: train.train_and_evaluate(ctx.config, ctx.tmp / "run")


def _set(**settings):
  """Training with dotted settings changed: _set(train__epochs=3)."""

  def run(ctx):
    for dotted, value in settings.items():
      section, name = dotted.split("__")
      ctx.config[section][name] = value
    return _train(ctx)

  return run


def _evaluate(workdir, **kwargs):
  return lambda: evaluate.evaluate(workdir, **kwargs)


def _type_id_without_eval_training(ctx):
  ctx.config.data.group_by = "type_id"
  ctx.config.data.use_eval_train = False
  return _train(ctx)


def _short_clips_for_frames(ctx):
  ctx.config.model.frames = 41  # The 1-s clips hold 32 frames.
  ctx.config.model.name = "IDNN"
  return _train(ctx)


def _truncated_wav_data(ctx):
  root = ctx.copy_of_data()
  clip = root / "dev_data" / "fan" / "train" / "normal_id_00_00000000.wav"
  os.truncate(clip, os.path.getsize(clip) // 2)
  return _train(ctx)


def _dangling_symlink_clip(ctx):
  root = ctx.copy_of_data()
  link = root / "dev_data" / "fan" / "train" / "normal_id_00_00000099.wav"
  link.symlink_to(ctx.tmp / "gone.wav")
  return _train(ctx)


def _stream_chunk_below_a_batch(ctx):
  ctx.config.data.device_resident = False
  ctx.config.data.stream_chunk_clips = 1  # 28 windows, batch 64.
  return _train(ctx)


def _damaged_file(name, content):
  def run(ctx):
    workdir = ctx.copy_of_trained()
    path = workdir / name
    path.write_text(
      content
      if content is not None
      else path.read_text()[: len(path.read_text()) // 2]
    )
    return _evaluate(workdir)

  return run


def _damaged_file_before_training(name):
  def run(ctx):
    workdir = ctx.copy_of_trained()
    path = workdir / name
    path.write_text(path.read_text()[:10])
    ctx.config.train.epochs = 3
    return lambda: train.train_and_evaluate(ctx.config, workdir)

  return run


def _truncate_checkpoint(workdir, which):
  """Cuts epoch 2's largest array file ("data") or its _METADATA in half."""
  step = workdir / "checkpoints" / "2" / "default"
  if which == "data":
    files = sorted(
      (step / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize
    )
    path = files[-1]
  else:
    path = step / "_METADATA"
  os.truncate(path, os.path.getsize(path) // 2)


def _truncated_checkpoint(which):
  def run(ctx):
    workdir = ctx.copy_of_trained()
    _truncate_checkpoint(workdir, which)
    return _evaluate(workdir, which="latest")

  return run


def _nan_in_cached_frames(ctx):
  ctx.copy_of_data()
  ctx.config.train.epochs = 1
  runtime.run(_train(ctx))  # Builds this dataset's own cache.
  directory = next(
    p
    for p in (pathlib.Path(ctx.config.data.cache_dir) / "features").iterdir()
    if cache.load(p).clips[0].path.startswith(ctx.config.data.root)
  )
  frames = np.memmap(directory / cache.FRAMES_FILE, np.float32, "r+")
  frames[100] = np.nan
  frames.flush()
  ctx.config.train.epochs = 2
  return _train(ctx)


def _dev_id_without_anomalies(ctx):
  root = ctx.copy_of_data()
  for clip in (root / "dev_data" / "fan" / "test").glob("anomaly_id_02_*"):
    clip.unlink()
  workdir = ctx.tmp / "run"
  runtime.run(_train(ctx))
  return _evaluate(workdir)


def _eval_id_of_one_label(ctx):
  truth = ctx.tmp / "eval_data_list.csv"
  rows, machine_type = [], None
  source = pathlib.Path(ctx.config.data.root) / "eval_data_list.csv"
  for line in source.read_text().splitlines():
    fields = line.split(",")
    if len(fields) == 1:
      machine_type = fields[0]
    elif machine_type == "fan" and fields[0].startswith("id_01"):
      fields[2] = "0"
    rows.append(",".join(fields))
  truth.write_text("\n".join(rows) + "\n")
  return _evaluate(ctx.copy_of_trained(), eval_ground_truth=truth)


def _wav_all_unreadable(ctx):
  folder = ctx.tmp / "recordings"
  folder.mkdir()
  (folder / "a.wav").write_text("not audio")
  (folder / "b.wav").write_bytes(b"")
  return lambda: recordings.score_recordings(
    ctx.trained, folder, machine_type="fan"
  )


def _workdir_in_use(ctx):
  workdir = ctx.tmp / "run"
  ctx.stack.enter_context(lock.hold(layout.Workdir(workdir), 60.0))
  return _train(ctx)


def _metrics_disk_full(ctx):
  write = os.write

  def full_disk_for_metrics(fd, data):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
      raise OSError(errno.ENOSPC, "No space left on device")
    return write(fd, data)

  ctx.monkeypatch.setattr(os, "write", full_disk_for_metrics)
  return _train(ctx)


CASES = [
  Case(
    "threshold percentile of 100",
    _set(score__threshold_percentile=100.0),
    2,
    "config.score.threshold_percentile=100.0",
  ),
  Case(
    "hop_length of 0",
    _set(features__hop_length=0),
    2,
    "config.features.hop_length=0",
  ),
  Case("n_fft of 0", _set(features__n_fft=0), 2, "config.features.n_fft=0"),
  Case("power of 0", _set(features__power=0.0), 2, "config.features.power=0.0"),
  Case(
    "fmin at Nyquist",
    _set(features__fmin=8000.0),
    2,
    "config.features.fmin=8000.0",
  ),
  Case(
    "huge n_fft",
    _set(features__n_fft=2**30),
    2,
    "config.features.n_fft=1073741824",
  ),
  Case(
    "sample_rate 0 with resample",
    _set(features__sample_rate=0, data__resample=True),
    2,
    "config.features.sample_rate=0",
  ),
  Case(
    "type_id with eval ids lacking training clips",
    _type_id_without_eval_training,
    2,
    "no training clips for fan/id_01",
  ),
  Case(
    "model.frames longer than the clips",
    _short_clips_for_frames,
    2,
    "fewer than config.model.frames=41",
  ),
  Case("WAV data chunk cut short", _truncated_wav_data, 2, "truncated"),
  Case(
    "dangling symlink clip",
    _dangling_symlink_clip,
    2,
    "normal_id_00_00000099.wav",
  ),
  Case(
    "stream chunk smaller than a batch",
    _stream_chunk_below_a_batch,
    2,
    "config.data.stream_chunk_clips=1",
  ),
  Case(
    "truncated thresholds.json",
    _damaged_file("thresholds.json", None),
    2,
    "thresholds.json: damaged",
  ),
  Case(
    "truncated groups.json",
    _damaged_file("groups.json", None),
    2,
    "groups.json: damaged",
  ),
  Case(
    "config.json holding {}",
    _damaged_file("config.json", "{}"),
    2,
    "config.json: damaged",
  ),
  Case(
    "damaged thresholds.json found before training",
    _damaged_file_before_training("thresholds.json"),
    2,
    "thresholds.json: damaged",
  ),
  Case(
    "truncated checkpoint data",
    _truncated_checkpoint("data"),
    2,
    "checkpoints/2: the checkpoint is damaged",
  ),
  Case(
    "truncated checkpoint _METADATA",
    _truncated_checkpoint("metadata"),
    2,
    "checkpoints/2: the checkpoint is damaged",
  ),
  Case(
    "NaN in the cached frames",
    _nan_in_cached_frames,
    2,
    "non-finite values in the cached frames or waveforms",
  ),
  Case(
    "dev id without anomalies",
    _dev_id_without_anomalies,
    0,
    "fan/id_02: every test clip has label 0",
  ),
  Case(
    "eval ground truth with one label for an id",
    _eval_id_of_one_label,
    0,
    "fan/id_01: every test clip has label 0",
  ),
  Case(
    "--wav where every file fails",
    _wav_all_unreadable,
    2,
    "none of the 2 file(s) could be scored",
  ),
  Case(
    "a second run on a workdir in use",
    _workdir_in_use,
    2,
    f"is in use by train.py (pid {os.getpid()} on host",
  ),
  Case(
    "disk full while appending to metrics.jsonl",
    _metrics_disk_full,
    2,
    "metrics.jsonl",
  ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(
  case, tiny_config, tmp_path, trained, capsys, caplog, monkeypatch
):
  with contextlib.ExitStack() as stack:
    ctx = Context(tiny_config, tmp_path, trained, monkeypatch, stack)
    fn = case.run(ctx)
    capsys.readouterr()
    caplog.clear()
    try:
      runtime.run(fn)
      code = 0
    except SystemExit as e:
      code = e.code
  stderr = capsys.readouterr().err
  assert "Traceback" not in stderr
  if case.code:
    lines = stderr.strip().splitlines()
    error = [line for line in lines if line.startswith("error: ")]
    assert error, stderr
    assert case.message in stderr, stderr
  else:
    assert case.message in caplog.text, caplog.text
  assert code == case.code, stderr


def test_group_of_one_training_clip_is_scored_with_trained_weights(
  tiny_config, tmp_path, caplog
):
  """No clip is held out, so no selection happens: never the initialisation."""
  root = _private_data(tiny_config, tmp_path)
  for clip in sorted((root / "dev_data" / "fan" / "train").iterdir())[1:]:
    clip.unlink()
  tiny_config.data.machine_types = ("fan",)
  tiny_config.data.use_eval_train = False
  tiny_config.train.batch_size = 16
  train.train_and_evaluate(tiny_config, tmp_path / "run")
  assert "no model selection for fan/seed0: no training clip was held out" in (
    caplog.text
  )
  helpers.assert_best_equals_latest(tmp_path / "run")


def test_checkpoint_whose_best_is_the_initialisation_scores_the_latest(
  tiny_config, tmp_path, monkeypatch
):
  """A workdir written before "best" fell back to the latest weights."""
  monkeypatch.setattr(steps, "keep_best", lambda state, metric: state)
  train.train_and_evaluate(tiny_config, tmp_path)
  monkeypatch.undo()
  helpers.assert_best_equals_latest(tmp_path)


def test_failed_background_checkpoint_write_names_its_own_epoch(
  tiny_config, tmp_path, monkeypatch
):
  calls = []

  def fail_second_check(self):
    calls.append(1)
    if len(calls) == 2:  # At the save of epoch 2: epoch 1's write failed.
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(
    ocp.CheckpointManager, "check_for_errors", fail_second_check
  )
  with pytest.raises(AeasdError, match=r"cannot write checkpoint 1 "):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_recording_names_cannot_forge_output_lines(
  trained, tiny_root, tmp_path, capsys
):
  """Tabs and newlines in names are escaped; a dangling link is reported."""
  folder = tmp_path / "recordings"
  folder.mkdir()
  source = next((tiny_root / "dev_data" / "fan" / "test").glob("*.wav"))
  names = ["tab\there.wav", "new\nline.wav", '"quoted.wav', "  segment.wav"]
  for name in names:
    shutil.copy(source, folder / name)
  (folder / "broken\n.wav").write_text("not audio")
  (folder / "dangling.wav").symlink_to(tmp_path / "gone.wav")
  capsys.readouterr()
  recordings.score_recordings(trained, folder, machine_type="fan")
  # A file's segments (indented lines) follow its line.
  lines = [
    line
    for line in capsys.readouterr().out.splitlines()
    if not line.startswith("  segment ")
  ]
  assert len(lines) == 6
  fields = [line.split("\t") for line in lines]
  # errors.shown quotes a name holding a control character, or that would
  # start with a quote or a space; any other name is printed as it is.
  shown = [json.loads(f[0]) if f[0].startswith('"') else f[0] for f in fields]
  assert sorted(shown) == sorted(
    str(folder / name) for name in [*names, "broken\n.wav", "dangling.wav"]
  )
  assert sorted(len(f) for f in fields) == [3, 3, 4, 4, 4, 4]
  assert (
    "dangling symbolic link" in lines[shown.index(str(folder / "dangling.wav"))]
  )


def test_csv_files_quote_a_comma_in_a_machine_type(tiny_config, tmp_path):
  root = _private_data(tiny_config, tmp_path)
  for section in ("dev_data", "eval_data"):
    (root / section / "fan").rename(root / section / "fan, big")
  tiny_config.data.machine_types = ("fan, big",)
  train.train_and_evaluate(tiny_config, tmp_path / "run")
  evaluate.evaluate(tmp_path / "run")
  with open(
    tmp_path / "run" / "results" / "mse" / "decisions.csv", newline=""
  ) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["type", "id", "files", "precision", "recall", "F1"]
  assert {row[0] for row in rows[1:]} == {"fan, big"}
  assert all(len(row) == 6 for row in rows)


def _evaluate_py(*args):
  return subprocess.run(
    [sys.executable, "evaluate.py", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )


def test_a_damaged_checkpoint_is_the_one_line_evaluate_prints(
  trained, tmp_path
):
  """No log of Orbax's or asyncio's buries the error, as a user sees it."""
  workdir = shutil.copytree(trained, tmp_path / "run")
  _truncate_checkpoint(workdir, "data")
  result = _evaluate_py(f"--workdir={workdir}", "--checkpoint=latest")
  assert result.returncode == 2
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  (line,) = lines
  assert line.startswith(
    f"error: {workdir}/checkpoints/2: the checkpoint is damaged ("
  ), line


def test_cache_dir_points_evaluate_at_a_copied_workdirs_cache(
  trained, tmp_path
):
  """The stored cache folder is of another machine: here, under a file."""
  workdir = shutil.copytree(trained, tmp_path / "run")
  config = json.loads((workdir / "config.json").read_text())
  (tmp_path / "a_file").write_text("")
  config["data"]["cache_dir"] = str(tmp_path / "a_file" / "cache")
  (workdir / "config.json").write_text(json.dumps(config))
  result = _evaluate_py(f"--workdir={workdir}")
  assert result.returncode == 2
  assert "config.data.cache_dir=" in result.stderr.splitlines()[-1]
  result = _evaluate_py(
    f"--workdir={workdir}", f"--cache_dir={tmp_path / 'cache'}"
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert list((tmp_path / "cache" / "features").iterdir())
  assert json.loads((workdir / "config.json").read_text()) == config


def test_unknown_setting_names_close_matches():
  result = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config=configs/idnn.py",
      "--config.train.epoch=3",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=120,
  )
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
    "error: --config.train.epoch: no such setting; close matches:"
    " config.train.epochs, config.train.adam_eps,"
    " config.train.cosine_start_epoch"
  ]


def _metrics_epochs(workdir):
  return [
    r["epoch"]
    for r in metric_log.read_records(layout.Workdir(workdir).metrics_file)
    if "epoch" in r
  ]


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_cleanly_and_the_rerun_log_is_consistent(
  presses, tiny_root, session_cache_dir, tmp_path
):
  """Once: stop after the epoch, saved. Twice: stop now; resume from before."""
  flags = [
    f"--config={REPO / 'configs' / 'ae.py'}",
    f"--config.data.root={tiny_root}",
    f"--config.data.cache_dir={session_cache_dir}",
    "--config.compile_cache_dir=off",
    "--config.features.n_mels=16",
    "--config.model.hidden=16",
    "--config.model.depth=1",
    "--config.model.bottleneck=4",
    "--config.train.batch_size=64",
    "--config.train.checkpoint_every=1000000",
    f"--workdir={tmp_path}",
  ]
  # A child of a test run in the background would inherit SIGINT ignored.
  with helpers.signal_handlers(helpers.PYTHON_SIGNALS):
    child = subprocess.Popen(
      [sys.executable, "train.py", *flags, "--config.train.epochs=1000000"],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.monotonic() + 120
  try:
    while not (metrics.exists() and metrics.read_text().count("epoch") >= 3):
      assert child.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
    for _ in range(presses):
      child.send_signal(signal.SIGINT)
      time.sleep(0.01)
    _, stderr = child.communicate(timeout=120)
  finally:
    child.kill()  # Only a hung child is still there to kill.
  assert child.returncode == 130, stderr
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  done = max(_metrics_epochs(tmp_path))
  # A second press stops at once inside an epoch's computation, but only
  # marks the stop while a checkpoint is written; either is a clean stop.
  resumed_from = {
    f"interrupted: stopped after epoch {done} as asked (Ctrl-C); rerun the"
    " same command to resume from it": done,
    f"interrupted: stopped during epoch {done + 1}; rerun the same command"
    " to resume from the start: no checkpoint was saved yet": 0,
  }[last]
  if presses == 1:
    assert resumed_from == done
  rerun = subprocess.run(
    [sys.executable, "train.py", *flags, f"--config.train.epochs={done + 2}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert _metrics_epochs(tmp_path) == list(range(1, done + 3))
  assert (f"resuming from epoch {resumed_from}" in rerun.stderr) == bool(
    resumed_from
  )


def test_second_ctrl_c_stops_at_once_only_inside_an_epoch(caplog):
  stop = interrupts.StopRequest()
  with helpers.signal_handlers(helpers.PYTHON_SIGNALS):
    with stop.installed():
      os.kill(os.getpid(), signal.SIGINT)
      assert stop.requested
      os.kill(os.getpid(), signal.SIGINT)  # Outside an epoch: only noted.
      assert "finishing this epoch's checkpoint write first" in caplog.text
      with pytest.raises(KeyboardInterrupt):
        with stop.interruptible():
          os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
