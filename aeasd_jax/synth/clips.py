"""One synthetic clip from its identity, and the writers of a layout's files.

A clip is a machine design (machine_sounds.py) mixed with room noise;
__init__.py and sections.py lay clips out as the DCASE years name them.
"""

import io
import zlib

import numpy as np
import soundfile

from aeasd_jax.synth import machine_sounds

# MIMII mixed in factory noise at 6, 0 and -6 dB SNR; these are milder so
# that a small model trained on a few thousand vectors still separates the
# classes.
_SNRS_DB = (12.0, 6.0, 0.0)
# Every clip peaks at -6 dBFS, far enough from full scale that rounding to
# 16 bits cannot clip.
_PEAK = 0.5
# A random stream's key after the machine id: a clip's split, or the shuffle
# of the eval test files.
TRAIN, TEST, SHUFFLE = range(3)
SPLITS = ('train', 'test')
LABELS = ('normal', 'anomaly')


def stream(seed, machine_type, machine_id, *key):
  """A random generator of its own for every clip and every shuffle."""
  # A clip thus does not depend on how many others are generated, and the
  # CRC, unlike hash(), is the same in every process.
  return np.random.default_rng(
    [seed, zlib.crc32(machine_type.encode()), machine_id, *key]
  )


def clip(
  seed,
  machine_type,
  machine_id,
  split,
  label,
  index,
  n,
  sample_rate,
  domain=None,
  speed=1.0,
):
  """The int16 samples of one clip; the arguments are its whole identity.

  `domain` indexes sections.DOMAINS, or is None in the 2020 layout,
  which has none and whose clips keep the random streams they always had;
  the machine runs at `speed` times its design speed.
  """
  key = (split, label, index) + (() if domain is None else (domain,))
  rng = stream(seed, machine_type, machine_id, *key)
  kinds = machine_sounds.ANOMALIES[machine_type]
  anomaly = kinds[index % len(kinds)] if label else None
  machine = machine_sounds.MACHINES[machine_type](
    rng, n, sample_rate, machine_id, anomaly, speed
  )
  snr = _SNRS_DB[rng.integers(len(_SNRS_DB))]
  background = machine_sounds.coloured_noise(
    rng, n, sample_rate, rng.uniform(0.8, 1.6)
  )
  # Distant activity makes the room level drift slowly.
  t = np.arange(n) / sample_rate
  background *= 1.0 + 0.2 * np.sin(
    2.0 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0.0, 2.0 * np.pi)
  )
  mix = machine + 10.0 ** (-snr / 20.0) * background
  mix *= _PEAK / np.max(np.abs(mix))
  return np.round(mix * 32767.0).astype(np.int16)


def writer(seed, machine_type, n, sample_rate):
  """A function that writes one clip of `machine_type` to a path."""

  def write(path, machine_id, split, label, index, domain=None, speed=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = clip(
      seed,
      machine_type,
      machine_id,
      split,
      label,
      index,
      n,
      sample_rate,
      domain,
      speed,
    )
    # Encoding in memory skips the fsync that soundfile does on closing a
    # file, which would otherwise take most of the run.
    buffer = io.BytesIO()
    soundfile.write(
      buffer, samples, sample_rate, format='WAV', subtype='PCM_16'
    )
    path.write_bytes(buffer.getvalue())

  return write


def write_csv(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(','.join(map(str, row)) + '\n' for row in rows))
