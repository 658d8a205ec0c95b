"""Deterministic synthetic machine sounds in the DCASE Task 2 layouts.

Run as `python -m aeasd_jax.synth --out=DIR [--year=2023]` to get a small data
set for tests. The 2020 layout (the default) names clips by machine id:

  dev_data/<type>/{train,test}/, eval_data/<type>/{train,test}/
  eval_data_list.csv: each blind eval test name, its original name, label

The 2023 layout is that of DCASE 2022 on: one section per type, whose clips
come from a source and a target domain that differ in one attribute, named in
the files, and a blind eval test set:

  dev_data/raw/<type>/{train,test}/, dev_data/raw/<type>/attributes_00.csv
  eval_data/raw/<type>/{train,test}/, eval_data/raw/<type>/attributes_01.csv
  ground_truth/ground_truth_{data,domain,attributes}/
    ground_truth_<type>_section_01_test.csv

Its ground truth takes the place of eval_data_list.csv, in the folders and
format of the official evaluator, nttcslab/dcase2023_task2_evaluator: rows
`section_01_0000.wav,<0 normal|1 anomaly>`, `...,<0 source|1 target>` and
`...,<full name without .wav>`, no header.
"""

import errno
import pathlib
import shutil
import uuid

from aeasd_jax.synth import machine_sounds
from aeasd_jax.synth import clips
from aeasd_jax.synth import sections
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

# A clip holds several clicks and strokes from MIN_SECONDS on; MAX_SECONDS
# bounds the memory a clip takes while it is made.
MIN_SECONDS = 0.5
MAX_SECONDS = 600.0


class OutDirExistsError(AeasdError, FileExistsError):
  """The output folder holds something, perhaps another run's data set.

  A FileExistsError too, so that callers racing to create the same data set
  can tell that another one won.
  """


def _check(year, seed, clips_per_id, seconds, sample_rate, machine_types):
  if year not in _LAYOUTS:
    raise AeasdError(
      f'year must be one of {list(_LAYOUTS)} (the DCASE layout to write), '
      f'got {year!r}'
    )
  if seed < 0:
    raise AeasdError(f'seed must be >= 0, got {seed}')
  if clips_per_id < 1:
    raise AeasdError(f'clips_per_id must be >= 1, got {clips_per_id}')
  if not MIN_SECONDS <= seconds <= MAX_SECONDS:  # NaN fails too.
    raise AeasdError(
      f'seconds must be in [{MIN_SECONDS}, {MAX_SECONDS:g}], got {seconds}'
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
  write = clips.writer(seed, machine_type, n, sample_rate)

  dev = root / 'dev_data' / machine_type
  for machine_id in DEV_IDS:
    for index in range(clips_per_id):
      write(
        dev / 'train' / f'normal_id_{machine_id:02d}_{index:08d}.wav',
        machine_id,
        clips.TRAIN,
        0,
        index,
      )
    for label, name in enumerate(('normal', 'anomaly')):
      for index in range(tests):
        write(
          dev / 'test' / f'{name}_id_{machine_id:02d}_{index:08d}.wav',
          machine_id,
          clips.TEST,
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
        clips.TRAIN,
        0,
        index,
      )
    originals = [(label, index) for label in (0, 1) for index in range(tests)]
    order = clips.stream(
      seed, machine_type, machine_id, clips.SHUFFLE
    ).permutation(len(originals))
    for number, pick in enumerate(order):
      label, index = originals[pick]
      name = f'id_{machine_id:02d}_{number:08d}.wav'
      original = f'{clips.LABELS[label]}_id_{machine_id:02d}_{index:08d}.wav'
      write(ev / 'test' / name, machine_id, clips.TEST, label, index)
      rows.append([name, original, str(label)])
  return rows


def _write_2020(root, machine_types, seed, clips_per_id, n, sample_rate):
  rows = []
  for machine_type in machine_types:
    rows += _write_type(root, machine_type, seed, clips_per_id, n, sample_rate)
  clips.write_csv(root / 'eval_data_list.csv', rows)


# How generate() fills its staging folder, per year of the layout.
_LAYOUTS = {2020: _write_2020, 2023: sections.write}
YEARS = tuple(_LAYOUTS)


def generate(
  out_dir,
  *,
  year=2020,
  seed=0,
  clips_per_id=DEFAULT_CLIPS_PER_ID,
  seconds=DEFAULT_SECONDS,
  sample_rate=DEFAULT_SAMPLE_RATE,
  machine_types=None,
):
  """Writes a synthetic DCASE Task 2 data set and returns its root.

  The module docstring shows the layouts. The same arguments give
  byte-identical files.

  Args:
    out_dir: the root to create; it must not exist or be an empty folder.
    year: the layout, one of YEARS: 2020 (machine ids) or 2023 (one section
      per type, source and target domains, attributes).
    seed: any integer >= 0.
    clips_per_id: normal training clips per machine id; the test sets get
      max(2, clips_per_id // 4) normal and as many anomalous clips per id. In
      the 2023 layout, source training clips per type and set, with
      max(2, clips_per_id // 8) target ones; the test sets have the said
      counts per domain.
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
  _check(year, seed, clips_per_id, seconds, sample_rate, machine_types)
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
    n = int(round(seconds * sample_rate))
    _LAYOUTS[year](staging, machine_types, seed, clips_per_id, n, sample_rate)
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
