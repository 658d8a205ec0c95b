"""metrics.jsonl: strict lines, no torn line on a full disk, resumes."""

import errno
import json
import logging
import math
import os

import pytest

from aeasd_jax.workdir import metric_log
from aeasd_jax.errors import AeasdError


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
  # runtime.configure_logging stops aeasd_jax records from reaching caplog.
  monkeypatch.setattr(logging.getLogger("aeasd_jax"), "propagate", True)


def _strict_lines(path):
  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")

  return [
    json.loads(line, parse_constant=refuse)
    for line in path.read_text().splitlines()
  ]


def test_non_finite_metrics_are_written_as_null(tmp_path):
  writer = metric_log.MetricWriter(tmp_path / "metrics.jsonl")
  writer.write(
    {
      "epoch": 1,
      "val_loss": {"fan": math.nan},
      "train_loss": {"fan": math.inf},
      "samples_per_s": 2.5,
    }
  )
  assert _strict_lines(tmp_path / "metrics.jsonl") == [
    {
      "epoch": 1,
      "val_loss": {"fan": None},
      "train_loss": {"fan": None},
      "samples_per_s": 2.5,
    }
  ]


def _full_disk_after(limit, monkeypatch):
  """os.write stores at most `limit` bytes in all, then fails with ENOSPC."""
  written = [0]
  real_write = os.write

  def write(fd, data):
    room = limit - written[0]
    if room <= 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    done = real_write(fd, bytes(data[:room]))
    written[0] += done
    return done

  monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("room", [0, 10])
def test_a_full_disk_is_an_error_and_leaves_no_torn_line(
  tmp_path, monkeypatch, room
):
  writer = metric_log.MetricWriter(tmp_path / "metrics.jsonl")
  writer.write({"epoch": 1, "train_loss": 1.0})
  before = (tmp_path / "metrics.jsonl").read_bytes()
  _full_disk_after(room, monkeypatch)
  with pytest.raises(
    AeasdError,
    match=(
      rf"cannot write {tmp_path / 'metrics.jsonl'} \(No space left on"
      r" device\); expected a writable folder with free space"
    ),
  ):
    writer.write({"epoch": 2, "train_loss": 0.5})
  assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_a_torn_last_line_is_skipped_and_cut_by_the_next_writer(
  tmp_path, caplog
):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "tra')
  with caplog.at_level(logging.WARNING):
    assert metric_log.read_records(tmp_path / "metrics.jsonl") == [
      {"epoch": 1, "train_loss": 1.0}
    ]
  assert "skipping its last line" in caplog.text
  metric_log.MetricWriter(tmp_path / "metrics.jsonl").write(
    {"epoch": 2, "train_loss": 0.5}
  )
  assert _strict_lines(path) == [
    {"epoch": 1, "train_loss": 1.0},
    {"epoch": 2, "train_loss": 0.5},
  ]


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 1}')
  metric_log.MetricWriter(tmp_path / "metrics.jsonl").write({"epoch": 2})
  assert metric_log.read_records(path) == [{"epoch": 1}, {"epoch": 2}]


@pytest.mark.parametrize(
  "text,line",
  [('{"epoch": 1}\n{"epo\n{"epoch": 3}\n', 2), ('[1, 2]\n{"epoch": 2}\n', 1)],
)
def test_damage_before_the_last_line_is_named(tmp_path, text, line):
  (tmp_path / "metrics.jsonl").write_text(text)
  expected = (
    rf"{tmp_path / 'metrics.jsonl'}: line {line} is damaged \(.*\);"
    " expected one JSON object per line"
  )
  with pytest.raises(AeasdError, match=expected):
    metric_log.read_records(tmp_path / "metrics.jsonl")
  with pytest.raises(AeasdError, match=expected):
    metric_log.MetricWriter(tmp_path / "metrics.jsonl")


def test_a_missing_log_is_named(tmp_path):
  with pytest.raises(
    AeasdError,
    match=r"metrics.jsonl: missing; expected a"
    " workdir written by train.py",
  ):
    metric_log.read_records(tmp_path / "metrics.jsonl")


def _log(workdir, records):
  writer = metric_log.MetricWriter(workdir / "metrics.jsonl")
  for record in records:
    writer.write(record)


@pytest.mark.parametrize(
  "resume_from,kept_epochs", [(2, [1, 2, 1, 2]), (None, [])]
)
def test_a_resumed_run_drops_the_epochs_it_logs_again(
  tmp_path, resume_from, kept_epochs
):
  _log(
    tmp_path,
    [
      {"epoch": 1},
      {"epoch": 2},
      {"epoch": 3},
      {"timing_s": {"total": 1.0}},
      {"epoch": 1},
      {"epoch": 2},
      {"evaluate": "best@2", "timing_s": {"total": 2.0}},
      {"epoch": 3},
      {"epoch": 4},
    ],
  )
  path = tmp_path / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"epoch": 5, "trai')  # Killed mid-write.
  os.chmod(path, 0o640)
  metric_log.drop_epochs_after(tmp_path / "metrics.jsonl", resume_from)
  records = _strict_lines(path)
  assert [r["epoch"] for r in records if "epoch" in r] == kept_epochs
  assert [r for r in records if "epoch" not in r] == [
    {"timing_s": {"total": 1.0}},
    {"evaluate": "best@2", "timing_s": {"total": 2.0}},
  ]
  if resume_from == 2:
    assert records.index({"timing_s": {"total": 1.0}}) == 2
  assert os.stat(path).st_mode & 0o777 == 0o640
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_dropping_from_a_log_that_needs_no_change_keeps_it(tmp_path):
  metric_log.drop_epochs_after(tmp_path / "metrics.jsonl", None)  # No log yet.
  assert not (tmp_path / "metrics.jsonl").exists()
  _log(tmp_path, [{"epoch": 1}, {"timing_s": {"total": 1.0}}])
  before = os.stat(tmp_path / "metrics.jsonl")
  metric_log.drop_epochs_after(tmp_path / "metrics.jsonl", 1)
  assert os.stat(tmp_path / "metrics.jsonl").st_ino == before.st_ino


def test_only_process_0_drops_epochs(tmp_path, monkeypatch):
  _log(tmp_path, [{"epoch": 1}, {"epoch": 2}])
  monkeypatch.setattr(metric_log.jax, "process_index", lambda: 1)
  metric_log.drop_epochs_after(tmp_path / "metrics.jsonl", None)
  assert len(metric_log.read_records(tmp_path / "metrics.jsonl")) == 2
