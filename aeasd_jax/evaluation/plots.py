"""ROC curves and score histograms as PNGs (evaluate.py --plots).

One figure per section (2020: per id), the unit each table row is for: its
ROC curves, titled with the very AUC the table prints, and its score
histogram with the decision threshold. matplotlib is the optional [plot]
extra; without it, say so and go on.
"""

import pathlib

import numpy as np

from aeasd_jax.data import dcase
from aeasd_jax.metrics import roc
from aeasd_jax.metrics import result_tables
from aeasd_jax.workdir import file_io
from aeasd_jax.errors import AeasdError


def roc_curves(year, unit):
  """[(label, metric key, clip mask)] of a section's curves.

  The masks are the clips each of the table's AUCs is computed on: all of
  them in 2020; each domain's in 2021; from 2022 each domain's normal clips
  and every anomalous clip (official_score.section_metrics).
  """
  labels = np.array([r.label for r in unit]) == 1
  if year == 2020:
    return [("all clips", "auc", np.ones(len(unit), bool))]
  domains = np.array([r.domain for r in unit])
  return [
    (
      domain,
      f"auc_{domain}",
      domains == domain if year == 2021 else (domains == domain) | labels,
    )
    for domain in dcase.DOMAINS
  ]


def _pyplot():
  """matplotlib's pyplot on a file-only backend, or a one-line error."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise AeasdError(
      "--plots needs matplotlib: pip install -e .[plot]"
    ) from None
  return plt


def _save(plt, fig, path):
  with file_io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)


def write(folder, year, rows, table):
  """One PNG per (type, section): ROC curves and the score histogram."""
  plt = _pyplot()
  for (machine_type, section), unit in result_tables.by_section(rows).items():
    labels = np.array([r.label for r in unit])
    scores = np.array([r.score for r in unit])
    fig, (roc_axes, hist) = plt.subplots(1, 2, figsize=(10, 4))
    for name, key, mask in roc_curves(year, unit):
      value = table[machine_type][section][key]
      if np.isnan(value):
        continue  # An id of one label has no curve (the table says nan).
      fpr, tpr, _ = roc.roc_curve(labels[mask], scores[mask])
      roc_axes.plot(fpr, tpr, label=f"{name}: AUC {value * 100:.2f}")
    roc_axes.plot([0, 1], [0, 1], "k:")
    roc_axes.set(
      xlabel="false positive rate",
      ylabel="true positive rate",
      title=f"{machine_type} {section}",
    )
    roc_axes.legend(loc="lower right")
    bins = np.linspace(scores.min(), scores.max(), 40)
    hist.hist(scores[labels == 0], bins, alpha=0.6, label="normal")
    hist.hist(scores[labels == 1], bins, alpha=0.6, label="anomaly")
    threshold = unit[0].threshold
    if np.isfinite(threshold):
      hist.axvline(threshold, color="k", linestyle="--", label="threshold")
    hist.set(
      xlabel="anomaly score", ylabel="clips", title=f"{machine_type} {section}"
    )
    hist.legend()
    fig.tight_layout()
    _save(plt, fig, folder / f"plot_{machine_type}_{section}.png")


def write_recordings(folder, config, rows, recordings, errors):
  """One PNG per scored recording (evaluate.py --wav --plots).

  Above, the log-mel spectrogram with the segments shaded; below, each
  window's error over time (at its first frame) and the window threshold.

  Args:
    folder: where the PNGs go, created if needed; each is named after its
      recording (a name taken twice gets _2, _3, ...).
    config: the run's config.
    rows: score_recordings' rows.
    recordings: the recordings.Recordings of the readable recordings.
    errors: {row index: [windows, n_mels] window errors per band}.
  """
  plt = _pyplot()
  folder.mkdir(parents=True, exist_ok=True)
  seconds_per_frame = config.features.hop_length / config.features.sample_rate
  taken = set()
  for i, r in enumerate(recordings.rows):
    row = rows[r]
    frames = recordings.features.clip_frames(i)
    fig, (spectrogram, curve) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    spectrogram.imshow(
      frames.T,
      origin="lower",
      aspect="auto",
      extent=(0, len(frames) * seconds_per_frame, 0, frames.shape[1]),
    )
    spectrogram.set(ylabel="mel band", title=f"{row['path']}")
    window_error = errors[r].mean(axis=1)
    curve.plot(np.arange(len(window_error)) * seconds_per_frame, window_error)
    curve.axhline(
      row["window_threshold"], color="k", linestyle="--", label="threshold"
    )
    for segment in row["segments"]:
      for axes in (spectrogram, curve):
        axes.axvspan(segment.start_s, segment.end_s, color="r", alpha=0.25)
    curve.set(xlabel="time (s)", ylabel="window error")
    curve.legend()
    fig.tight_layout()
    _save(plt, fig, folder / f"{_unique_stem(row['path'], taken)}.png")


def _unique_stem(path, taken):
  stem = pathlib.Path(path).stem
  name, n = stem, 1
  while name in taken:
    n += 1
    name = f"{stem}_{n}"
  taken.add(name)
  return name
