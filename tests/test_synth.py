"""Tests for the synthetic DCASE 2020 Task 2 data set.

Checks the layout, the file format, determinism and how hard the anomalies are.
"""

import hashlib
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
import soundfile

from aeasd_jax import synth
from aeasd_jax.errors import AeasdError

_TRAIN_NAME = re.compile(r'^normal_id_(\d\d)_(\d{8})\.wav$')
_DEV_TEST_NAME = re.compile(r'^(normal|anomaly)_id_(\d\d)_(\d{8})\.wav$')
_EVAL_TEST_NAME = re.compile(r'^id_(\d\d)_(\d{8})\.wav$')

_CLIPS = 8
_TESTS = 2  # max(2, _CLIPS // 4) of each label per id.
_SECONDS = 1.0
_RATE = 16000


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  return synth.generate(
    tmp_path_factory.mktemp('small') / 'data',
    clips_per_id=_CLIPS,
    seconds=_SECONDS,
  )


@pytest.fixture(scope='module')
def separable(tmp_path_factory):
  # 6 normal and 6 anomalous test clips per id keep the AUCs below steady.
  return synth.generate(
    tmp_path_factory.mktemp('separable') / 'data',
    clips_per_id=24,
    seconds=1.0,
    machine_types=('fan', 'valve'),
  )


def _names(folder):
  return sorted(path.name for path in folder.iterdir())


def _parse(pattern, names):
  matches = [pattern.match(name) for name in names]
  assert all(matches), [n for n, m in zip(names, matches) if not m]
  return sorted(m.groups() for m in matches)


def _eval_list(root):
  """Reads eval_data_list.csv into {type: [(name, original, label)]}."""
  table = {}
  for line in (root / 'eval_data_list.csv').read_text().splitlines():
    fields = line.split(',')
    if len(fields) == 1:
      rows = table.setdefault(fields[0], [])
    else:
      rows.append(tuple(fields))
  return table


def _digests(root):
  return {
    str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).digest()
    for path in sorted(root.rglob('*'))
    if path.is_file()
  }


def test_layout(small):
  assert _names(small) == ['dev_data', 'eval_data', 'eval_data_list.csv']
  assert not list(small.parent.glob('.*partial*'))
  for machine_type in synth.MACHINE_TYPES:
    dev = small / 'dev_data' / machine_type
    ev = small / 'eval_data' / machine_type
    for folder in (dev, ev):
      assert _names(folder) == ['test', 'train']
    assert _parse(_TRAIN_NAME, _names(dev / 'train')) == [
      (f'{i:02d}', f'{k:08d}') for i in synth.DEV_IDS for k in range(_CLIPS)
    ]
    assert _parse(_DEV_TEST_NAME, _names(dev / 'test')) == sorted(
      (label, f'{i:02d}', f'{k:08d}')
      for label in ('anomaly', 'normal')
      for i in synth.DEV_IDS
      for k in range(_TESTS)
    )
    assert _parse(_TRAIN_NAME, _names(ev / 'train')) == [
      (f'{i:02d}', f'{k:08d}') for i in synth.EVAL_IDS for k in range(_CLIPS)
    ]
    assert _parse(_EVAL_TEST_NAME, _names(ev / 'test')) == [
      (f'{i:02d}', f'{k:08d}')
      for i in synth.EVAL_IDS
      for k in range(2 * _TESTS)
    ]
  assert not set(synth.DEV_IDS) & set(synth.EVAL_IDS)


def test_files_are_16_khz_mono_pcm16_without_clipping(small):
  paths = sorted(small.rglob('*.wav'))
  assert len(paths) == len(synth.MACHINE_TYPES) * (
    (len(synth.DEV_IDS) + len(synth.EVAL_IDS)) * (_CLIPS + 2 * _TESTS)
  )
  for path in paths:
    info = soundfile.info(path)
    assert (info.format, info.subtype) == ('WAV', 'PCM_16'), path
    assert (info.samplerate, info.channels) == (_RATE, 1), path
    assert info.frames == int(_SECONDS * _RATE), path
    samples, _ = soundfile.read(path, dtype='int16')
    assert 1000 < np.max(np.abs(samples.astype(int))) < 32767, path


def test_eval_list_matches_the_eval_test_files(small):
  table = _eval_list(small)
  assert list(table) == list(synth.MACHINE_TYPES)
  for machine_type, rows in table.items():
    names = [name for name, _, _ in rows]
    assert names == _names(small / 'eval_data' / machine_type / 'test')
    originals = []
    for name, original, label in rows:
      machine_id = _EVAL_TEST_NAME.match(name).group(1)
      kind, original_id, number = _DEV_TEST_NAME.match(original).groups()
      assert original_id == machine_id
      assert label == {'normal': '0', 'anomaly': '1'}[kind]
      originals.append((machine_id, kind, number))
    assert sorted(originals) == sorted(
      (f'{i:02d}', kind, f'{k:08d}')
      for i in synth.EVAL_IDS
      for kind in ('normal', 'anomaly')
      for k in range(_TESTS)
    )


def test_eval_test_is_shuffled(small):
  labels = [label for _, _, label in _eval_list(small)['fan']]
  assert labels != sorted(labels)


def test_same_seed_gives_the_same_bytes(tmp_path):
  settings = dict(clips_per_id=2, seconds=0.5, machine_types=('fan', 'valve'))
  first = _digests(synth.generate(tmp_path / 'a', seed=3, **settings))
  second = _digests(synth.generate(tmp_path / 'b', seed=3, **settings))
  other = _digests(synth.generate(tmp_path / 'c', seed=4, **settings))
  assert first == second
  assert other.keys() == first.keys()
  assert all(
    other[path] != first[path] for path in first if path.endswith('.wav')
  )


def test_an_empty_out_dir_is_used(tmp_path):
  out = tmp_path / 'empty'
  out.mkdir()
  synth.generate(out, clips_per_id=1, seconds=0.5, machine_types=('valve',))
  assert (out / 'eval_data_list.csv').is_file()


def test_refuses_an_out_dir_that_holds_something(tmp_path):
  out = tmp_path / 'used'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  with pytest.raises(AeasdError, match='already exists'):
    synth.generate(out, clips_per_id=1, seconds=0.5)
  assert _names(out) == ['keep.txt']
  assert _names(tmp_path) == ['used']


def test_loses_a_race_cleanly(tmp_path, monkeypatch):
  out = tmp_path / 'data'
  write_type = synth._write_type

  def racing_write_type(*args):
    rows = write_type(*args)
    # Another process finishes the same data set first.
    out.mkdir(exist_ok=True)
    (out / 'eval_data_list.csv').write_text('theirs')
    return rows

  monkeypatch.setattr(synth, '_write_type', racing_write_type)
  with pytest.raises(FileExistsError):
    synth.generate(out, clips_per_id=1, seconds=0.5, machine_types=('fan',))
  assert _names(tmp_path) == ['data']
  assert (out / 'eval_data_list.csv').read_text() == 'theirs'


@pytest.mark.parametrize(
  'setting',
  [
    dict(seconds=0.1),
    dict(clips_per_id=0),
    dict(seed=-1),
    dict(sample_rate=8000),
    dict(machine_types=('pump',)),
    dict(machine_types=()),
  ],
)
def test_rejects_bad_settings(tmp_path, setting):
  name = next(iter(setting))
  with pytest.raises(AeasdError, match=name):
    synth.generate(tmp_path / 'data', **setting)
  assert not list(tmp_path.iterdir())


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
  calls = []

  def failing_clip(*args):
    calls.append(args)
    if len(calls) > 3:
      raise RuntimeError('disk full')
    return np.zeros(8000, np.int16)

  monkeypatch.setattr(synth, '_clip', failing_clip)
  with pytest.raises(RuntimeError):
    synth.generate(tmp_path / 'data', clips_per_id=2, seconds=0.5)
  assert not list(tmp_path.iterdir())


def test_command_line(tmp_path):
  out = tmp_path / 'data'
  command = [
    sys.executable,
    '-m',
    'aeasd_jax.synth',
    f'--out={out}',
    '--clips_per_id=1',
    '--seconds=0.5',
    '--machine_types=valve',
  ]
  repo = pathlib.Path(__file__).resolve().parents[1]
  done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert _names(out / 'dev_data') == ['valve']
  again = subprocess.run(command, cwd=repo, capture_output=True, text=True)
  assert again.returncode != 0
  assert 'already exists' in again.stderr
  assert 'Traceback' not in again.stderr


def _mean_log_spectrum(path):
  """The mean over 1024-sample Hann frames of the log power, in dB."""
  samples, _ = soundfile.read(path)
  frames = np.lib.stride_tricks.sliding_window_view(samples, 1024)[::512]
  power = np.abs(np.fft.rfft(frames * np.hanning(1024), axis=1)) ** 2
  return np.mean(10.0 * np.log10(power + 1e-12), axis=0)


def _auc(normal, anomalous):
  """The Mann-Whitney estimate of P(anomalous score > normal score)."""
  ranks = stats.rankdata(np.concatenate([normal, anomalous]))
  count = len(anomalous)
  rank_sum = ranks[len(normal) :].sum()
  return (rank_sum - count * (count + 1) / 2) / (len(normal) * count)


def _spectral_auc(root, machine_type):
  """The mean over dev ids of the AUC of a long-term-spectrum detector.

  A clip scores the largest deviation, in dB, of its mean log spectrum from
  the mean over the normal training clips of its id; no network is trained.
  """
  aucs = []
  for machine_id in synth.DEV_IDS:
    pattern = f'*_id_{machine_id:02d}_*.wav'
    reference = np.mean(
      [
        _mean_log_spectrum(path)
        for path in (root / 'dev_data' / machine_type / 'train').glob(pattern)
      ],
      axis=0,
    )
    scores = {
      label: [
        np.max(np.abs(_mean_log_spectrum(path) - reference))
        for path in (root / 'dev_data' / machine_type / 'test').glob(
          label + pattern
        )
      ]
      for label in ('normal', 'anomaly')
    }
    aucs.append(_auc(scores['normal'], scores['anomaly']))
  return np.mean(aucs)


def test_fan_anomalies_show_in_the_long_term_spectrum(separable):
  assert _spectral_auc(separable, 'fan') > 0.75


def test_valve_anomalies_hide_from_the_long_term_spectrum(separable):
  # Chance is 0.5; valve anomalies only move clicks in time, so a detector
  # that ignores time order must stay near it.
  assert _spectral_auc(separable, 'valve') < 0.7
