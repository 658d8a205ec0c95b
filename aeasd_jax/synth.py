"""Deterministic synthetic machine sounds in the DCASE 2020 Task 2 layout.

Run as `python -m aeasd_jax.synth --out=DIR` to get a small data set for tests.
"""

import errno
import io
import pathlib
import shutil
import sys
import uuid
import zlib

from absl import app
from absl import flags
import numpy as np
import soundfile

from aeasd_jax import machine_sounds
from aeasd_jax.errors import AeasdError

# Even ids go to the development set and odd ids to the evaluation set, as in
# DCASE 2020 where fan has dev ids 00/02/04/06 and eval ids 01/03/05.
DEV_IDS = (0, 2, 4)
EVAL_IDS = (1, 3)
# 2 s clips give 63 centred frames, i.e. 59 five-frame vectors; 24 clips per
# id over 5 ids give 7,080 training vectors per type, so that generating the
# set, training 100 baseline epochs and evaluating take about 2 minutes on
# two CPU cores.
DEFAULT_CLIPS_PER_ID = 24
DEFAULT_SECONDS = 2.0
DEFAULT_SAMPLE_RATE = 16000
MACHINE_TYPES = tuple(machine_sounds.MACHINES)

# MIMII mixed in factory noise at 6, 0 and -6 dB SNR; these are milder so
# that a small model trained on a few thousand vectors still separates the
# classes.
_SNRS_DB = (12.0, 6.0, 0.0)
# Every clip peaks at -6 dBFS, far enough from full scale that rounding to
# 16 bits cannot clip.
_PEAK = 0.5
_MIN_SECONDS = 0.5
# A random stream's key after the machine id: a clip's split, or the shuffle
# of the eval test files.
_TRAIN, _TEST, _SHUFFLE = range(3)


class OutDirExistsError(AeasdError, FileExistsError):
  """The output folder holds something, perhaps another run's data set.

  A FileExistsError too, so that callers racing to create the same data set
  can tell that another one won.
  """


def _stream(seed, machine_type, machine_id, *key):
  """A random generator of its own for every clip and every shuffle."""
  # A clip thus does not depend on how many others are generated, and the
  # CRC, unlike hash(), is the same in every process.
  return np.random.default_rng(
    [seed, zlib.crc32(machine_type.encode()), machine_id, *key]
  )


def _clip(seed, machine_type, machine_id, split, label, index, n, sample_rate):
  """The int16 samples of one clip; the arguments are its whole identity."""
  rng = _stream(seed, machine_type, machine_id, split, label, index)
  kinds = machine_sounds.ANOMALIES[machine_type]
  anomaly = kinds[index % len(kinds)] if label else None
  machine = machine_sounds.MACHINES[machine_type](
    rng, n, sample_rate, machine_id, anomaly
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


def _check(seed, clips_per_id, seconds, sample_rate, machine_types):
  if seed < 0:
    raise AeasdError(f'seed must be >= 0, got {seed}')
  if clips_per_id < 1:
    raise AeasdError(f'clips_per_id must be >= 1, got {clips_per_id}')
  if seconds < _MIN_SECONDS:
    raise AeasdError(
      f'seconds must be >= {_MIN_SECONDS} so that a clip holds several '
      f'clicks and strokes, got {seconds}'
    )
  # Scrape noise and valve modes reach 6 kHz, below the Nyquist frequency of
  # DCASE's 16 kHz with room to spare.
  if sample_rate < 16000:
    raise AeasdError(f'sample_rate must be >= 16000, got {sample_rate}')
  unknown = sorted(set(machine_types) - set(MACHINE_TYPES))
  if unknown or not machine_types:
    raise AeasdError(
      f'machine_types must be a non-empty subset of '
      f'{list(MACHINE_TYPES)}, got {list(machine_types)}'
    )


def _write_type(root, machine_type, seed, clips_per_id, n, sample_rate):
  """Writes one machine type and returns its eval_data_list.csv rows."""
  tests = max(2, clips_per_id // 4)

  def write(path, machine_id, split, label, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = _clip(
      seed, machine_type, machine_id, split, label, index, n, sample_rate
    )
    # Encoding in memory skips the fsync that soundfile does on closing a
    # file, which would otherwise take most of the run.
    buffer = io.BytesIO()
    soundfile.write(
      buffer, samples, sample_rate, format='WAV', subtype='PCM_16'
    )
    path.write_bytes(buffer.getvalue())

  dev = root / 'dev_data' / machine_type
  for machine_id in DEV_IDS:
    for index in range(clips_per_id):
      write(
        dev / 'train' / f'normal_id_{machine_id:02d}_{index:08d}.wav',
        machine_id,
        _TRAIN,
        0,
        index,
      )
    for label, name in enumerate(('normal', 'anomaly')):
      for index in range(tests):
        write(
          dev / 'test' / f'{name}_id_{machine_id:02d}_{index:08d}.wav',
          machine_id,
          _TEST,
          label,
          index,
        )

  rows = [[machine_type]]
  ev = root / 'eval_data' / machine_type
  for machine_id in EVAL_IDS:
    for index in range(clips_per_id):
      write(
        ev / 'train' / f'normal_id_{machine_id:02d}_{index:08d}.wav',
        machine_id,
        _TRAIN,
        0,
        index,
      )
    originals = [(label, index) for label in (0, 1) for index in range(tests)]
    order = _stream(seed, machine_type, machine_id, _SHUFFLE).permutation(
      len(originals)
    )
    for number, pick in enumerate(order):
      label, index = originals[pick]
      name = f'id_{machine_id:02d}_{number:08d}.wav'
      original = (
        f'{("normal", "anomaly")[label]}_id_{machine_id:02d}_{index:08d}.wav'
      )
      write(ev / 'test' / name, machine_id, _TEST, label, index)
      rows.append([name, original, str(label)])
  return rows


def generate(
  out_dir,
  *,
  seed=0,
  clips_per_id=DEFAULT_CLIPS_PER_ID,
  seconds=DEFAULT_SECONDS,
  sample_rate=DEFAULT_SAMPLE_RATE,
  machine_types=None,
):
  """Writes a synthetic DCASE 2020 Task 2 data set and returns its root.

  The root gets dev_data/<type>/{train,test}, eval_data/<type>/{train,test}
  and eval_data_list.csv. The same arguments give byte-identical files.

  Args:
    out_dir: the root to create; it must not exist or be an empty folder.
    seed: any integer >= 0.
    clips_per_id: normal training clips per machine id; the test sets get
      max(2, clips_per_id // 4) normal and as many anomalous clips per id.
    seconds: clip length.
    sample_rate: in Hz, at least 16000.
    machine_types: a subset of MACHINE_TYPES; None means all.

  Returns:
    The root as a pathlib.Path.

  Raises:
    OutDirExistsError: out_dir holds something, also when another process
      filled it while this one was writing.
    AeasdError: for a bad argument.
  """
  machine_types = tuple(
    MACHINE_TYPES if machine_types is None else machine_types
  )
  _check(seed, clips_per_id, seconds, sample_rate, machine_types)
  out_dir = pathlib.Path(out_dir)
  taken = OutDirExistsError(
    f'{out_dir} already exists and is not an empty folder; expected a new '
    'or empty folder for the data set'
  )
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise taken
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  # A partial data set must never look like a finished one, so everything is
  # written beside out_dir and renamed into place at the end.
  staging = out_dir.parent / f'.{out_dir.name}.partial-{uuid.uuid4().hex}'
  staging.mkdir()
  try:
    rows = []
    n = int(round(seconds * sample_rate))
    for machine_type in machine_types:
      rows += _write_type(
        staging, machine_type, seed, clips_per_id, n, sample_rate
      )
    (staging / 'eval_data_list.csv').write_text(
      ''.join(','.join(row) + '\n' for row in rows)
    )
    try:
      if out_dir.exists():
        out_dir.rmdir()
      staging.rename(out_dir)
    except OSError as err:
      if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
        raise taken from err
      raise
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return out_dir


def _define_flags():
  """Defines the command-line flags.

  Only the script defines them: on import they would clash with same-named
  flags of any program that imports generate().
  """
  flags.DEFINE_string('out', None, 'Folder to create for the data set.')
  flags.DEFINE_integer('seed', 0, 'Random seed; same seed, same bytes.')
  flags.DEFINE_integer(
    'clips_per_id',
    DEFAULT_CLIPS_PER_ID,
    'Normal training clips per machine id; the test sets get a quarter of '
    'it (at least 2) normal and as many anomalous clips.',
  )
  flags.DEFINE_float('seconds', DEFAULT_SECONDS, 'Clip length in seconds.')
  flags.DEFINE_list(
    'machine_types', list(MACHINE_TYPES), 'Machine types to generate.'
  )
  flags.mark_flag_as_required('out')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  values = flags.FLAGS
  try:
    root = generate(
      values.out,
      seed=values.seed,
      clips_per_id=values.clips_per_id,
      seconds=values.seconds,
      machine_types=values.machine_types,
    )
  except AeasdError as err:
    sys.exit(f'error: {err}')
  print(root)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
