"""What the benchmark scripts share: settings, synthetic windows, run headers.

The header names the device, versions, date and command behind every number.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys

import flax
import jax
import jaxlib
import numpy as np
import optax

from aeasd_jax.data import window_data
from configs import ae
from configs import idnn
from configs import vae

# The networks the speed benchmarks time, by the name their options take.
CONFIGS = {"AE": ae, "VAE": vae, "IDNN": idnn}
FRAMES_PER_CLIP = 313  # A 10 s DCASE clip at hop 512.
N_MELS = 128


def positive_int(text):
  """An argparse type: a whole number of at least 1."""
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
  return value


def header(**versions):
  """The device, library versions, date and command line of this run.

  Args:
    **versions: more name=version entries, such as torch's.
  """
  device = jax.local_devices()[0]
  return {
    "device_kind": device.device_kind,
    "platform": device.platform,
    "device_count": jax.device_count(),
    "host_cpus": os.cpu_count(),
    "versions": {
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      **versions,
    },
    # The command-buffer and other XLA levers are set through this.
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
    "command": shlex.join([sys.executable] + sys.argv),
  }


def write_json(path, result):
  pathlib.Path(path).write_text(json.dumps(result, indent=1) + "\n")


def load_average():
  """The machine's 1, 5 and 15 minute load: other jobs slow every timing."""
  return [round(x, 2) for x in os.getloadavg()]


def windows_per_clip(frames_per_window):
  return FRAMES_PER_CLIP - frames_per_window + 1


def synthetic_windows(
  groups, clips_per_group, val_clips, frames_per_window, seed=0
):
  """Host WindowData of random frames: each group's train clips, then val.

  The values do not matter to the speed; the shapes and the gather do.
  """
  clips = clips_per_group + val_clips
  rng = np.random.default_rng(seed)
  frames = rng.standard_normal(
    (groups * clips * FRAMES_PER_CLIP, N_MELS), np.float32
  )
  starts = window_data.window_starts(
    np.full(groups * clips, FRAMES_PER_CLIP), frames_per_window
  )
  starts = starts.astype(np.int32).reshape(
    groups, clips * windows_per_clip(frames_per_window)
  )
  split = clips_per_group * windows_per_clip(frames_per_window)
  return window_data.WindowData(
    frames,
    starts[:, :split],
    np.full(groups, split, np.int32),
    starts[:, split:],
    np.full(groups, val_clips * windows_per_clip(frames_per_window), np.int32),
  )
