"""The benchmark scripts run and report sane numbers; no timing is asserted.

They run as subprocesses, as a user runs them; torch is optional everywhere.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import fused_table

BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


def _run(script, *args, env=None):
  return subprocess.run(
    [sys.executable, str(BENCHMARKS / script), *args],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    check=False,
  )


def test_train_speed_reports_sane_records(tmp_path):
  # A torch that fails to import stands in for a machine without torch, so
  # --peer must say so and still succeed.
  hidden = tmp_path / "no_torch"
  hidden.mkdir()
  (hidden / "torch.py").write_text(
    "raise ModuleNotFoundError('torch hidden by the test')\n"
  )
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
      filter(None, [str(hidden), os.environ.get("PYTHONPATH")])
    ),
  }
  out = tmp_path / "results.json"
  result = _run(
    "train_speed.py",
    "--quick",
    "--peer",
    "--settings=AE:512:1x1,IDNN:256:2x2",
    "--clips_per_group=4",
    "--repeats=2",
    f"--out={out}",
    env=env,
  )
  assert result.returncode == 0, result.stderr
  assert "skipping the PyTorch peer" in result.stdout
  assert "M samp/s" in result.stdout
  results = json.loads(out.read_text())
  header = results["header"]
  for field in ("device_kind", "platform", "date", "command"):
    assert header[field]
  assert {"jax", "jaxlib", "flax", "optax"} <= set(header["versions"])
  records = results["records"]
  assert [(r["model"], r["batch_size"], r["models"]) for r in records] == [
    ("AE", 512, 1),
    ("IDNN", 256, 4),
  ]
  for record in records:
    assert math.isfinite(record["samples_per_s"])
    assert record["samples_per_s"] > 0
    assert record["compile_s"] >= 0
    assert record["epoch_s"] > 0
    assert record["finite"]
    assert "ours_over_peer" not in record
  # The FLOP count the reference notes give for the AE: 6 x 264,192 weights.
  assert records[0]["flops_per_sample"] == 1_585_152
  assert records[0]["trainable_params_per_model"] == 267_928
  assert records[1]["trainable_params_per_model"] == 185_496
  # Each group trains on 4 clips x 309 windows, in whole batches.
  assert records[1]["samples_per_epoch"] == 4 * (4 * 309 // 256) * 256
  # The fused-step table the GPU session prints reads these very files.
  table = _run("fused_table.py", str(out), "--markdown")
  assert table.returncode == 0, table.stderr
  assert (
    sum(
      line.startswith(("| AE", "| IDNN")) for line in table.stdout.splitlines()
    )
    == 2
  )
  for row in fused_table.rows(records):
    assert row["kernels"] == "xla" and row["x xla"] == 1.0


def test_feature_speed_prints_clips_per_second(tmp_path):
  out = tmp_path / "features.json"
  result = _run(
    "feature_speed.py",
    "--quick",
    "--clips_per_id=1",
    "--seconds=1",
    f"--out={out}",
  )
  assert result.returncode == 0, result.stderr
  assert "cache build:" in result.stdout and "clips/s" in result.stdout
  results = json.loads(out.read_text())
  assert results["header"]["date"] and results["header"]["command"]
  assert results["clips"] == 25  # 5 fan ids x (1 train + 2 + 2 test clips).
  assert math.isfinite(results["ours_clips_per_s"])
  assert results["ours_clips_per_s"] > 0
  # Programs compiled, not seconds: 8 lengths from 1 to 1.875 s are 32 to
  # 59 frames, in the buckets 32, 40, 48, 56 and 64.
  one, many = results["lengths"]
  assert (one["setting"], one["distinct_lengths"]) == ("one length", 1)
  assert (many["setting"], many["distinct_lengths"]) == ("distinct lengths", 8)
  for record in (one, many):
    assert record["clips"] == 8
    for field in ("cache_build_s", "per_file_bucketed_s"):
      assert math.isfinite(record[field]) and record[field] > 0
  assert one["cache_build_programs"] == one["per_file_bucketed_programs"] == 1
  assert many["cache_build_programs"] == 5
  assert many["per_file_bucketed_programs"] == 5
  assert many["per_file_unbucketed_programs"] == 8


def test_torch_peer_is_the_baseline_ae():
  pytest.importorskip("torch")
  # pylint: disable-next=g-import-not-at-top
  from benchmarks import peer_torch

  assert peer_torch.parameter_count(peer_torch.autoencoder()) == 267_928
  assert (
    peer_torch.measure(64, 2, "cpu", "eager", clips=1, repeats=1, warmup=1) > 0
  )
  with pytest.raises(ValueError, match="CUDA"):
    peer_torch.measure(64, 2, "cpu", "cuda_graph")


def test_stream_speed_reports_both_modes(tmp_path):
  out = tmp_path / "stream.json"
  result = _run(
    "stream_speed.py",
    "--groups=2",
    "--clips=6",
    "--chunk_clips=2",
    "--batch_size=128",
    "--repeats=1",
    f"--out={out}",
  )
  assert result.returncode == 0, result.stderr
  assert "streamed / resident" in result.stdout
  records = json.loads(out.read_text())["records"]
  assert [r["mode"] for r in records] == ["resident", "streamed"]
  for r in records:
    assert r["steps"] > 0
    assert math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0


def test_time_to_first_result_tells_cold_from_warm(tmp_path):
  out = tmp_path / "ttfr.json"
  result = _run("time_to_first_result.py", "--epochs=2", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  runs = {r["run"]: r for r in json.loads(out.read_text())["records"]}
  assert runs["train cold"]["cache_entries_added"] > 0
  # The second identical run is served by the persistent compilation cache,
  # as JAX's own compile log says too.
  assert runs["train warm"]["cache_entries_added"] == 0
  assert runs["train cold"]["compile_log"]["cache_hits"] == 0
  assert runs["train warm"]["compile_log"]["compiled"] == 0
  assert runs["train warm"]["compile_log"]["cache_hits"] > 0
  for name in ("train cold", "train warm", "evaluate cold", "evaluate warm"):
    assert math.isfinite(runs[name]["wall_s"]) and runs[name]["wall_s"] > 0


def test_compile_log_matches_interleaved_lines_by_program():
  # pylint: disable-next=g-import-not-at-top
  from benchmarks import time_to_first_result

  lines = [
    (0.0, text)
    for text in (
      "Compiling jit(init_state) with global shapes and types (a).",
      "Compiling jit(run_epoch) with global shapes and types (b).",
      "Persistent compilation cache hit for 'jit_run_epoch'",
      "Finished XLA compilation of jit(run_epoch) in 0.25 sec",
      "Finished XLA compilation of jit(init_state) in 2.5 sec",
    )
  ]
  log = time_to_first_result.compile_log(lines)
  hits = {p["name"]: p["cache_hit"] for p in log["programs"]}
  assert hits == {"jit(init_state)": False, "jit(run_epoch)": True}
  assert (log["compiled"], log["cache_hits"], log["xla_s"]) == (1, 1, 2.75)
