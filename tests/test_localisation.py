"""evaluate.py --wav tells when in a recording, and where in the spectrum.

A burst inserted at a known time must be flagged by a segment that holds it
and is not much longer; the same clip without it gets no segment.
"""

import json

import librosa
import numpy as np
import pytest
import soundfile

import helpers

from aeasd_jax.data import features
from aeasd_jax.evaluation import recordings
from aeasd_jax.evaluation import segments
from aeasd_jax.training import train
from aeasd_jax.workdir import layout

BURST_START_S = 0.4
BURST_S = 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_root, session_cache_dir):
  config = helpers.tiny_config(tiny_root, session_cache_dir)
  config.data.machine_types = ("fan",)
  # Two epochs leave normal clips' errors as far apart as a burst's; twenty,
  # and a few more held-out clips for the window threshold, do not.
  config.train.epochs = 20
  config.train.validation_split = 0.3
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope="module")
def burst_and_control(trained, tiny_root, tmp_path_factory):
  """A normal dev test clip, and a copy with a loud noise burst inserted."""
  config, _ = trained
  source = sorted((tiny_root / "dev_data" / "fan" / "test").glob("normal_*"))[0]
  wave, rate = soundfile.read(source)
  folder = tmp_path_factory.mktemp("wav")
  # Float samples: the burst must not clip, nor the clip be rescaled.
  soundfile.write(folder / "control.wav", wave, rate, subtype="FLOAT")
  burst = wave.copy()
  start = int(BURST_START_S * rate)
  stop = start + int(BURST_S * rate)
  noise = np.random.default_rng(0).standard_normal(stop - start)
  burst[start:stop] += 10 * np.sqrt(np.mean(wave**2)) * noise
  soundfile.write(folder / "burst.wav", burst, rate, subtype="FLOAT")
  return folder


def _json_rows(capsys, workdir, path):
  recordings.score_recordings(workdir, path, output="json")
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_burst_is_flagged_where_it_is_and_the_control_is_not(
  trained, burst_and_control, capsys
):
  config, workdir = trained
  (burst,) = _json_rows(capsys, workdir, burst_and_control / "burst.wav")
  (control,) = _json_rows(capsys, workdir, burst_and_control / "control.wav")
  assert control["segments"] == []
  assert len(burst["segments"]) == 1
  segment = burst["segments"][0]
  assert segment["start_s"] <= BURST_START_S
  assert segment["end_s"] >= BURST_START_S + BURST_S
  # At most a window's span beyond the burst on each side, plus one frame.
  window_s = (
    (config.model.frames + 1)
    * config.features.hop_length
    / config.features.sample_rate
  )
  assert segment["end_s"] - segment["start_s"] <= BURST_S + 2 * window_s
  assert segment["peak"] > burst["window_threshold"]
  shares = [b["share"] for b in segment["bands"]]
  assert 0 < sum(shares) <= 1 + 1e-6


def test_text_output_adds_a_line_per_segment(
  trained, burst_and_control, capsys
):
  _, workdir = trained
  recordings.score_recordings(workdir, burst_and_control)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3, lines
  assert lines[0].startswith(str(burst_and_control / "burst.wav") + "\t")
  assert lines[1].startswith("  segment ")
  assert lines[2].startswith(str(burst_and_control / "control.wav") + "\t")


def test_the_window_thresholds_are_stored_for_these_weights(trained):
  _, workdir = trained
  stored = layout.Workdir(workdir).read_thresholds()
  entry = next(v for k, v in stored.items() if k.endswith(" windows"))
  assert entry["percentile"] == 99.0
  assert set(entry["thresholds"]) == {"fan"}


def test_plots_are_named_after_the_recordings(
  trained, burst_and_control, capsys
):
  _, workdir = trained
  recordings.score_recordings(workdir, burst_and_control, plots=True)
  capsys.readouterr()
  names = {p.name for p in layout.Workdir(workdir).recording_plots.iterdir()}
  assert names == {"burst.png", "control.png"}


def test_mel_band_ranges_are_librosas_band_edges():
  edges = librosa.mel_frequencies(16 + 2, fmin=20.0, fmax=7000.0, htk=False)
  ranges = features.mel_band_ranges(16000, 16, 20.0, 7000.0, False)
  np.testing.assert_allclose(ranges[:, 0], edges[:-2], rtol=1e-6)
  np.testing.assert_allclose(ranges[:, 1], edges[2:], rtol=1e-6)


def test_segments_merge_runs_closer_than_a_window_and_clip_at_the_end():
  errors = np.zeros((40, 4))
  errors[[5, 6, 9], 1] = 8.0  # 9 - 6 = 3 <= 5 frames: one run.
  errors[[20], 2] = 8.0
  errors[[38, 39], 3] = 8.0
  found = segments.find_segments(
    errors,
    1.0,
    seconds_per_frame=0.1,
    frames_per_window=5,
    band_ranges=np.array([[0, 10], [5, 20], [10, 30], [20, 40]], float),
    duration_s=4.2,
    max_bands=1,
  )
  np.testing.assert_allclose(
    [(s.start_s, s.end_s) for s in found],
    [(0.5, 1.4), (2.0, 2.5), (3.8, 4.2)],
  )
  assert [s.bands for s in found] == [
    ((5.0, 20.0, 1.0),),
    ((10.0, 30.0, 1.0),),
    ((20.0, 40.0, 1.0),),
  ]
