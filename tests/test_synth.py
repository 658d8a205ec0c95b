"""Tests for the synthetic DCASE Task 2 data sets, 2020 and 2023 layouts.

Checks the layouts, the file format, determinism, the ground truth, the domain
shift and how hard the anomalies are.
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
from aeasd_jax.synth import clips
from aeasd_jax.synth import sections
from aeasd_jax.errors import AeasdError

_TRAIN_NAME = re.compile(r'^normal_id_(\d\d)_(\d{8})\.wav$')
_DEV_TEST_NAME = re.compile(r'^(normal|anomaly)_id_(\d\d)_(\d{8})\.wav$')
_EVAL_TEST_NAME = re.compile(r'^id_(\d\d)_(\d{8})\.wav$')
# domain, split, label, number, attribute key, attribute value.
_NAME_2023 = re.compile(
  r'^section_0[01]_(source|target)_(train|test)_(normal|anomaly)_(\d{4})'
  r'_([a-z]+)_(\d+)\.wav$'
)
_BLIND_2023 = re.compile(r'^section_01_(\d{4})\.wav$')

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
def small_2023(tmp_path_factory):
  return synth.generate(
    tmp_path_factory.mktemp('small_2023') / 'data',
    year=2023,
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


@pytest.mark.parametrize('year', synth.YEARS)
def test_same_seed_gives_the_same_bytes(tmp_path, year):
  settings = dict(
    year=year, clips_per_id=2, seconds=0.5, machine_types=('fan', 'valve')
  )
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
    dict(year=2021),
  ],
)
def test_rejects_bad_settings(tmp_path, setting):
  name = next(iter(setting))
  with pytest.raises(AeasdError, match=name):
    synth.generate(tmp_path / 'data', **setting)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('year', synth.YEARS)
def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch, year):
  calls = []

  def failing_clip(*args):
    calls.append(args)
    if len(calls) > 3:
      raise RuntimeError('disk full')
    return np.zeros(8000, np.int16)

  monkeypatch.setattr(clips, 'clip', failing_clip)
  with pytest.raises(RuntimeError):
    synth.generate(tmp_path / 'data', year=year, clips_per_id=2, seconds=0.5)
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


def test_command_line_year(tmp_path):
  repo = pathlib.Path(__file__).resolve().parents[1]

  def run(out, year):
    return subprocess.run(
      [
        sys.executable,
        '-m',
        'aeasd_jax.synth',
        f'--out={out}',
        f'--year={year}',
        '--clips_per_id=1',
        '--seconds=0.5',
        '--machine_types=slider',
      ],
      cwd=repo,
      capture_output=True,
      text=True,
    )

  done = run(tmp_path / 'data', 2023)
  assert done.returncode == 0, done.stderr
  assert _names(tmp_path / 'data' / 'dev_data' / 'raw') == ['slider']
  refused = run(tmp_path / 'other', 2021)
  assert refused.returncode != 0
  assert 'year must be one of [2020, 2023]' in refused.stderr
  assert 'Traceback' not in refused.stderr
  assert not (tmp_path / 'other').exists()


# Per type, the weighted sum over the files of a tiny 2020 set (sorted by
# path, the k-th weighted k + 1) of the sum of the absolute samples, as the
# code wrote them before the 2023 layout was added.
_FINGERPRINTS_2020 = {
  'fan': 9739134827,
  'valve': 1233817204,
  'slider': 5158557554,
}


def test_2020_layout_is_unchanged(tmp_path):
  root = synth.generate(tmp_path / 'data', clips_per_id=1, seconds=0.5)
  for machine_type, expected in _FINGERPRINTS_2020.items():
    paths = sorted(root.glob(f'*/{machine_type}/*/*.wav'))
    assert len(paths) == 25
    found = sum(
      (k + 1) * np.abs(soundfile.read(path, dtype='int16')[0].astype(int)).sum()
      for k, path in enumerate(paths)
    )
    # Not a digest: numpy's SIMD sines and exponentials may differ in the last
    # bit between CPUs, which can move a rounded sample by one step, so each
    # file may move these sums by a few times its weight. A changed clip moves
    # them by 1e5 or more.
    assert abs(found - expected) <= len(paths) ** 2, machine_type


def _read_csv(path):
  return [line.split(',') for line in path.read_text().splitlines()]


def test_2023_layout(small_2023):
  assert _names(small_2023) == ['dev_data', 'eval_data', 'ground_truth']
  assert not list(small_2023.parent.glob('.*partial*'))
  targets = max(2, _CLIPS // 8)
  for machine_type in synth.MACHINE_TYPES:
    key, source, target = sections.DOMAIN_SHIFTS[machine_type]
    values = {'source': str(source), 'target': str(target)}
    trains = sorted(
      (domain, 'train', 'normal', f'{k:04d}', key, values[domain])
      for domain, count in (('source', _CLIPS), ('target', targets))
      for k in range(count)
    )
    tests = sorted(
      (domain, 'test', label, f'{k:04d}', key, values[domain])
      for domain in ('source', 'target')
      for label in ('normal', 'anomaly')
      for k in range(_TESTS)
    )
    dev = small_2023 / 'dev_data' / 'raw' / machine_type
    ev = small_2023 / 'eval_data' / 'raw' / machine_type
    for folder, section in ((dev, '00'), (ev, '01')):
      assert _names(folder) == [f'attributes_{section}.csv', 'test', 'train']
      assert {n[:10] for n in _names(folder / 'train')} == {
        f'section_{section}'
      }
      assert _parse(_NAME_2023, _names(folder / 'train')) == trains
    assert _parse(_NAME_2023, _names(dev / 'test')) == tests
    assert _parse(_BLIND_2023, _names(ev / 'test')) == [
      (f'{k:04d}',) for k in range(len(tests))
    ]
    # Every labelled clip of the type, once, with its attribute.
    for folder, section, listed in (
      (dev, '00', ('train', 'test')),
      (ev, '01', ('train',)),
    ):
      header, *rows = _read_csv(folder / f'attributes_{section}.csv')
      assert header == ['file_name', 'd1p', 'd1v']
      assert sorted(rows) == sorted(
        [f'{machine_type}/{split}/{name}', key, _NAME_2023.match(name)[6]]
        for split in listed
        for name in _names(folder / split)
      )
  assert sections.DEV_ID != sections.EVAL_ID


def test_2023_ground_truth_names_every_blind_clip(small_2023):
  truth = small_2023 / 'ground_truth'
  assert _names(truth) == [
    'ground_truth_attributes',
    'ground_truth_data',
    'ground_truth_domain',
  ]
  for machine_type in synth.MACHINE_TYPES:
    name = f'ground_truth_{machine_type}_section_01_test.csv'
    data, domains, originals = (
      _read_csv(truth / f'ground_truth_{kind}' / name)
      for kind in ('data', 'domain', 'attributes')
    )
    test = small_2023 / 'eval_data' / 'raw' / machine_type / 'test'
    blind = _names(test)
    for rows in (data, domains, originals):
      assert [row[0] for row in rows] == blind
    identities = []
    for (blind_name, label), (_, domain), (_, original) in zip(
      data, domains, originals
    ):
      fields = _NAME_2023.match(original + '.wav').groups()
      assert fields[:3] == (
        ('source', 'target')[int(domain)],
        'test',
        ('normal', 'anomaly')[int(label)],
      )
      identities.append(fields)
      # The blind clip is the one its full name stands for.
      samples, rate = soundfile.read(test / blind_name, dtype='int16')
      expected = clips.clip(
        0,
        machine_type,
        sections.EVAL_ID,
        clips.TEST,
        int(label),
        int(fields[3]),
        len(samples),
        rate,
        int(domain),
        sections.speed(machine_type, int(domain)),
      )
      np.testing.assert_array_equal(samples, expected)
    dev_tests = _names(small_2023 / 'dev_data' / 'raw' / machine_type / 'test')
    assert sorted(identities) == _parse(_NAME_2023, dev_tests)
  labels = [label for _, label in _read_csv(truth / 'ground_truth_data' / name)]
  assert labels != sorted(labels)


def _line_power(samples, rate):
  """(frequencies, power) of the spectral lines from 80 to 400 Hz."""
  power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
  freqs = np.fft.rfftfreq(len(samples), 1.0 / rate)
  band = (freqs > 80.0) & (freqs < 400.0)
  return freqs[band], power[band]


def _repetition(samples, rate, band, low, high):
  """(rates, correlation) of the energy in a band, for rates low to high Hz.

  The band picks what marks each cycle: the valve's clicks, the slider's
  thumps at the end of each stroke (its friction noise, which climbs up and
  down with the carriage, repeats only every other stroke).
  """
  spectrum = np.fft.rfft(samples)
  freqs = np.fft.rfftfreq(len(samples), 1.0 / rate)
  spectrum[(freqs < band[0]) | (freqs > band[1])] = 0.0
  filtered = np.fft.irfft(spectrum, len(samples))
  hop = rate // 1000
  envelope = np.square(filtered[: len(filtered) // hop * hop])
  envelope = envelope.reshape(-1, hop).mean(axis=1)
  # Relative to its mean, so that loud and quiet clips weigh alike.
  envelope = envelope / envelope.mean() - 1.0
  lags = np.arange(int(1000 / high), int(1000 / low) + 1)
  correlation = [
    np.dot(envelope[:-lag], envelope[lag:]) / (envelope.size - lag)
    for lag in lags
  ]
  return 1000.0 / lags, np.array(correlation)


# What each type's target domain shifts, as (rates, strength) whose peak is
# the fan's blade-pass frequency, the valve's click rate or the slider's
# stroke rate.
_MEASURES = {
  'fan': _line_power,
  'valve': lambda x, rate: _repetition(x, rate, (700, 6000), 4.0, 12.0),
  'slider': lambda x, rate: _repetition(x, rate, (150, 210), 1.7, 4.5),
}


@pytest.mark.parametrize('machine_type', synth.MACHINE_TYPES)
def test_2023_target_domain_shifts_the_attribute(small_2023, machine_type):
  _, source, target = sections.DOMAIN_SHIFTS[machine_type]
  found = {}
  for domain in ('source', 'target'):
    # One machine's normal clips; their mean curve has a steadier peak than
    # any one clip's, whose background may be as loud as the machine.
    paths = small_2023.glob(
      f'dev_data/raw/{machine_type}/*/*_{domain}_*_normal_*'
    )
    curves = [_MEASURES[machine_type](*soundfile.read(path)) for path in paths]
    rates = curves[0][0]
    found[domain] = rates[np.argmax(np.mean([c for _, c in curves], axis=0))]
  # The machine runs target / source times as fast; without the shift the
  # ratio would be 1, at least 20% away.
  ratio = found['target'] / found['source']
  assert ratio == pytest.approx(target / source, rel=0.05), found


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
