"""Where a recording's anomaly is: time segments and the mel bands in them.

From the per-window, per-band errors of scoring/windows.py and a group's
window threshold. A window covers frames_per_window frames; frame t is
centred at t * hop / sample_rate, so a run of flagged windows i..j spans
from frame i to the end of frame j + frames_per_window - 1. Runs closer than
one window apart are merged: a window's span is the resolution.
"""

from typing import NamedTuple

import numpy as np


class Segment(NamedTuple):
  start_s: float
  end_s: float
  peak: float  # The highest window error in it.
  bands: tuple  # ((low Hz, high Hz, share of the segment's error), ...)


def find_segments(
  band_errors,
  threshold,
  *,
  seconds_per_frame,
  frames_per_window,
  band_ranges,
  duration_s,
  max_bands,
):
  """The segments whose windows exceed `threshold`, earliest first.

  Args:
    band_errors: [windows, n_mels] squared errors per window and band.
    threshold: the group's window threshold (a NaN flags nothing).
    seconds_per_frame: hop_length / sample_rate.
    frames_per_window: frames per window (config.model.frames).
    band_ranges: [n_mels, 2] each band's Hz range
      (features.mel_band_ranges).
    duration_s: the recording's length, where the last segment ends at most.
    max_bands: how many of the bands that carry most of a segment's error
      to name, merged where neighbours.
  """
  errors = band_errors.mean(axis=1)
  flagged = np.flatnonzero(errors > threshold)
  segments = []
  for first, last in _runs(flagged, gap=frames_per_window):
    inside = band_errors[first : last + 1]
    segments.append(
      Segment(
        start_s=first * seconds_per_frame,
        end_s=min(duration_s, (last + frames_per_window) * seconds_per_frame),
        peak=float(errors[first : last + 1].max()),
        bands=_top_bands(inside.sum(axis=0), band_ranges, max_bands),
      )
    )
  return segments


def _runs(indices, gap):
  """(first, last) of each run of sorted indices, bridging gaps < gap."""
  runs = []
  for i in indices:
    if runs and i - runs[-1][1] <= gap:
      runs[-1][1] = i
    else:
      runs.append([i, i])
  return [tuple(r) for r in runs]


def _top_bands(per_band, band_ranges, count):
  """The `count` bands of largest error as Hz ranges, neighbours merged."""
  total = per_band.sum()
  top = np.sort(np.argsort(per_band)[::-1][:count])
  merged = []
  for band in top:
    if merged and band == merged[-1][-1] + 1:
      merged[-1].append(band)
    else:
      merged.append([band])
  return tuple(
    (
      float(band_ranges[group[0], 0]),
      float(band_ranges[group[-1], 1]),
      float(per_band[group].sum() / total) if total > 0 else 0.0,
    )
    for group in merged
  )
