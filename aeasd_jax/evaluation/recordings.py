"""Scoring new recordings with a trained run, as a plant engineer would.

Each file gets a score, its group's threshold and a decision, or its own
error, and the segments where its windows stand out; printed a line a file
(then a line a segment) with names escaped so none can forge a line, or as
JSON lines.
"""

import functools
import pathlib
import typing

import numpy as np

from aeasd_jax.data import audio
from aeasd_jax.data import cache
from aeasd_jax.data import cache_compute
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.evaluation import evaluate
from aeasd_jax.evaluation import plots as plots_lib
from aeasd_jax.evaluation import segments
from aeasd_jax.data import features as features_lib
from aeasd_jax.data import labels
from aeasd_jax.models import registry
from aeasd_jax.scoring import group_scoring
from aeasd_jax.scoring import windows
from aeasd_jax.training import run_identity
from aeasd_jax.workdir import file_io
from aeasd_jax.workdir import layout
from aeasd_jax.training import restore
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown


def _recording_paths(path):
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if path.is_dir():
    found = dcase.audio_files(path, recursive=True)
    if found:
      return found
    raise AeasdError(f"--wav={path}: no .wav or .flac files in the folder")
  raise AeasdError(f"--wav={path}: no such file or folder")


def _rate_advice(sample_rate):
  # config.data.resample is the run's setting, fixed when it was trained.
  rate = int(sample_rate)
  return (
    f"resample it to {rate} Hz first (e.g. sox in.wav -r {rate} out.wav),"
    " or retrain with --config.data.resample=True"
  )


def _group_of_recording(path, machine_type, group_names):
  """The group whose model scores a recording: its type, or type/section.

  With one model per section (id in 2020), the file's DCASE name tells the
  section, read as the data layer reads clip names.
  """
  if machine_type in group_names:
    return machine_type
  name = f"{machine_type}/{dcase.section_in_name(path)}"
  if name not in group_names:
    raise _untrained_section(
      path,
      machine_type,
      group_names,
      "this run has one model per machine type and section (id in 2020)",
    )
  return name


def _untrained_section(path, machine_type, names, why):
  """The error of a recording whose name gives none of the trained sections.

  `names` are "type/section" groups or classes.
  """
  prefix = machine_type + "/"
  trained = [n[len(prefix) :] for n in names if n.startswith(prefix)]
  return AeasdError(
    f"{path}: {why}, and the file name gives no trained section of"
    f" {machine_type}; expected a DCASE clip name of one of {trained}, such"
    f" as {trained[0] if trained else 'id_00'}_0001.wav"
  )


def score_recordings(
  workdir,
  path,
  *,
  machine_type=None,
  which="best",
  data_root=None,
  cache_dir=None,
  score_method=None,
  output="text",
  plots=False,
):
  """Scores any recordings with a trained run and decides normal or anomaly.

  Each recording also gets the time segments whose windows stand out, and
  the mel bands that carry most of their error (scoring/windows.py says
  when a window stands out).

  Args:
    workdir: the run's folder.
    path: a file or a folder of .wav/.flac files.
    machine_type: which type's model scores them; optional when the run
      trained one type.
    which: the --checkpoint value.
    data_root: where the run's data lies now, needed only to fit thresholds
      that thresholds.json lacks (see evaluate.load_data).
    cache_dir: where its feature cache lies now (run_identity.load_config).
    score_method: "mse" or "mahalanobis" in place of config.score.method.
    output: "text" (a tab-separated line per file, then a line per segment)
      or "json" (one JSON object per file and line).
    plots: also draw each recording's window errors and spectrogram, with
      its segments marked, under the workdir's results/recordings/.

  Returns:
    One dict per file: path, and score, threshold, anomaly, window
    threshold and segments, or error.
  """
  if output not in ("text", "json"):
    raise AeasdError(f"--format={output}: expected text or json")
  workdir = layout.Workdir(workdir)
  config = evaluate.with_score_method(
    run_identity.load_config(workdir, cache_dir), score_method
  )
  group_names = workdir.read_groups()
  machine_type = _machine_type(machine_type, group_names)
  setup, params, batch_stats, tag = restore.load_weights(
    config, workdir, group_names, which
  )
  # The dataset is needed only for what the workdir has not stored.
  load_data = functools.cache(
    lambda: evaluate.load_data(workdir, config, data_root)
  )
  statistics = group_scoring.statistics_for(
    config, workdir, load_data, setup, params, batch_stats
  )
  thresholds = group_scoring.thresholds_for(
    config, workdir, load_data, setup, params, batch_stats, tag, statistics
  )
  rows, recordings = _read_recordings(
    config, path, machine_type, group_names, setup.class_names
  )
  weights = (setup, params, batch_stats, statistics)
  if recordings is not None:
    _score(config, rows, recordings, group_names, weights, thresholds)
  if recordings is not None and setup.task == registry.CLASSIFICATION:
    # A classifier scores whole clips: no window errors to localise with.
    for r in recordings.rows:
      rows[r].update(window_threshold=None, segments=[])
  elif recordings is not None:
    window_thresholds = group_scoring.window_thresholds_for(
      config, workdir, load_data, setup, params, batch_stats, tag
    )
    errors = _localise(
      config, rows, recordings, group_names, weights, window_thresholds
    )
    if plots:
      plots_lib.write_recordings(
        workdir.recording_plots, config, rows, recordings, errors
      )
  _print_rows(rows, output)
  if recordings is None:
    raise AeasdError(
      f"--wav={shown(path)}: none of the {len(rows)} file(s)"
      " could be scored (each one's error is printed above);"
      " expected readable recordings"
    )
  return rows


def _machine_type(machine_type, group_names):
  """--machine_type, checked; the one type a run trained when not given."""
  types = sorted({g.split("/")[0] for g in group_names})
  if machine_type is None and len(types) == 1:
    machine_type = types[0]
  if machine_type not in types:
    raise AeasdError(
      f"--machine_type={machine_type}: expected one of the"
      f" types this run trained: {types}"
    )
  return machine_type


class Recordings(typing.NamedTuple):
  """The readable recordings as a FeatureCache, and the row of each."""

  features: cache.FeatureCache  # Its clips are dcase.Clip of the files.
  rows: list  # Index into the rows of each of its clips.


def _read_recordings(config, path, machine_type, group_names, class_names):
  """Each recording's log-mel frames, or the error that stops it.

  A classifier's clip examples are tiled or cut to config.data.clip_seconds,
  with their waveforms, as training read them.

  Returns:
    (rows, recordings): one row per file, {"path", "group"} or {"path",
    "error"}; recordings is a Recordings of the readable files, or None
    when there is none.
  """
  # One program per bucket of lengths, not one per distinct length.
  log_mel = features_lib.ClipLogMel(dict(config.features))
  samples = dataset.clip_samples(config)
  needed = registry.example_frames(config)
  rows, clips, frames, waves = [], [], [], []
  for file in _recording_paths(path):
    row = {"path": str(file)}
    rows.append(row)
    try:
      group = _group_of_recording(file, machine_type, group_names)
      wave = audio.read_audio(
        file,
        sample_rate=config.features.sample_rate,
        resample=config.data.resample,
        min_samples=config.features.n_fft,
        channel=dataset.audio_channel(config, config.data.dcase_year),
        rate_advice=_rate_advice(config.features.sample_rate),
      )
      seconds = len(wave) / config.features.sample_rate
      if samples:
        wave = cache_compute.fixed_length(wave, samples)
      mel = log_mel([wave])[0]
      if len(mel) < needed:
        raise AeasdError(
          f"{file}: {len(mel)} frames, fewer than"
          f" config.model.frames={config.model.frames};"
          " expected a longer recording"
        )
      clip = dcase.Clip(
        str(file),
        machine_type,
        _section_of_recording(file, group),
        dcase.UNLABELLED,
        "test",
        "eval",
      )
      _check_class(clip, class_names, config.data.labels)
    except AeasdError as e:
      row["error"] = str(e)
      continue
    row["group"] = group
    row["seconds"] = seconds
    clips.append(clip)
    frames.append(mel)
    waves.append(wave)
  if not clips:
    return rows, None
  lengths = np.asarray([len(f) for f in frames], np.int64)
  return rows, Recordings(
    cache.FeatureCache(
      directory=None,
      frames=np.concatenate(frames),
      clips=tuple(clips),
      offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
      lengths=lengths,
      bad_files=(),
      waves=np.stack(waves) if samples else None,
    ),
    [i for i, row in enumerate(rows) if "error" not in row],
  )


def _check_class(clip, class_names, scheme):
  """A classifier scores a recording by its class, which its name must tell."""
  if class_names and labels.class_of(clip, scheme) not in class_names:
    raise _untrained_section(
      clip.path,
      clip.machine_type,
      class_names,
      "a classifier scores a recording by its machine's class (type and"
      " section, id in 2020)",
    )


def _section_of_recording(path, group):
  """The section (id in 2020) a recording's name gives, or its group's.

  A classifier's class is its machine type and section: a recording whose
  name tells none can be scored only by a run with one model per section.
  """
  if "/" in group:
    return group.split("/", 1)[1]
  return dcase.section_in_name(path) or ""


def _score(config, rows, recordings, group_names, weights, thresholds):
  """Adds score, threshold and anomaly to each readable recording's row."""
  setup, params, batch_stats, statistics = weights
  members = [
    [i for i, r in enumerate(recordings.rows) if rows[r]["group"] == g]
    for g in group_names
  ]
  scores = group_scoring.score_groups(
    config,
    recordings.features,
    setup,
    params,
    batch_stats,
    members,
    statistics,
  )
  for name, indices, per_seed in zip(group_names, members, scores):
    for i, score in zip(indices, per_seed.mean(0)):
      rows[recordings.rows[i]].update(
        score=float(score),
        threshold=thresholds[name],
        anomaly=bool(score > thresholds[name]),
      )


def _localise(config, rows, recordings, group_names, weights, thresholds):
  """Adds window_threshold and segments to each readable recording's row.

  Returns:
    {row index: [windows, n_mels] window errors per band}, for the plots.
  """
  setup, params, batch_stats, _ = weights
  features = config.features
  band_ranges = features_lib.mel_band_ranges(
    features.sample_rate,
    features.n_mels,
    features.fmin,
    features.fmax,
    features.htk,
  )
  errors = {}
  features_of = recordings.features
  for i, r in enumerate(recordings.rows):
    row = rows[r]
    errors[r] = windows.band_errors(
      setup,
      params,
      batch_stats,
      group_names.index(row["group"]),
      features_of.clip_frames(i),
    )
    row["window_threshold"] = thresholds[row["group"]]
    row["segments"] = segments.find_segments(
      errors[r],
      row["window_threshold"],
      seconds_per_frame=features.hop_length / features.sample_rate,
      frames_per_window=setup.frames_per_window,
      band_ranges=band_ranges,
      duration_s=row["seconds"],
      max_bands=config.score.segment_bands,
    )
  return errors


def _print_rows(rows, output):
  for row in rows:
    print(_json_line(row) if output == "json" else _text_lines(row))


def _text_lines(row):
  # Tab-separated fields; a name holding a tab or newline is printed
  # escaped, so it cannot forge a field or a line.
  if "error" in row:
    return f"{shown(row['path'])}\tERROR\t{shown(row['error'])}"
  verdict = "ANOMALY" if row["anomaly"] else "normal"
  lines = [
    f"{shown(row['path'])}\t{row['score']:.6g}\t(threshold"
    f" {row['threshold']:.6g})\t{verdict}"
  ]
  for segment in row["segments"]:
    bands = ", ".join(
      f"{low:.0f}-{high:.0f} Hz ({share:.0%})"
      for low, high, share in segment.bands
    )
    lines.append(
      f"  segment {segment.start_s:.2f}-{segment.end_s:.2f} s"
      f" (peak {segment.peak:.4g}, window threshold"
      f" {row['window_threshold']:.4g}): {bands}"
    )
  return "\n".join(lines)


def _json_line(row):
  """One recording as a JSON object, for monitoring systems to read."""
  if "error" in row:
    return file_io.dumps_json({"file": row["path"], "error": row["error"]})
  return file_io.dumps_json(
    {
      "file": row["path"],
      "group": row["group"],
      "score": row["score"],
      "threshold": row["threshold"],
      "decision": "anomaly" if row["anomaly"] else "normal",
      "window_threshold": row["window_threshold"],
      "segments": [
        {
          "start_s": s.start_s,
          "end_s": s.end_s,
          "peak": s.peak,
          "bands": [
            {"low_hz": low, "high_hz": high, "share": share}
            for low, high, share in s.bands
          ],
        }
        for s in row["segments"]
      ],
    }
  )
