"""Tests for aeasd_jax.official_score against each year's evaluator rules.

The oracles restate the evaluators' formulas with scikit-learn and scipy, as
the evaluators themselves compute them. `metrics.roc_auc_score` matches
scikit-learn to the last bit and every other step is the same float64
operation in the same order, so results must agree exactly.
"""

import sys

import numpy as np
import pytest
from scipy import stats

from aeasd_jax.data import dcase
from aeasd_jax.metrics import official_score
from aeasd_jax.errors import AeasdError

sk = pytest.importorskip('sklearn.metrics')

YEARS = dcase.YEARS
DOMAIN_YEARS = YEARS[1:]
# Unsorted, mixed case: the evaluators sort names, and 'ToyCar' < 'bearing'.
TYPES = ('fan', 'ToyCar', 'bearing')
SECTIONS = ('01', '00', '02')
EPS = sys.float_info.epsilon


def _unit(rng):
  """Labels, scores, domains and decisions of one section, with many ties.

  Domains of unequal sizes and anomaly rates, so that each clip-set rule
  gives its own number.
  """
  counts = {
    ('source', 0): rng.integers(8, 15),
    ('source', 1): rng.integers(3, 8),
    ('target', 0): rng.integers(3, 8),
    ('target', 1): rng.integers(6, 12),
  }
  domains = np.repeat([d for d, _ in counts], list(counts.values()))
  labels = np.repeat([y for _, y in counts], list(counts.values()))
  shift = 0.8 * labels - 0.5 * (domains == 'target')
  scores = np.round(rng.normal(shift, 1.0), 1)  # Rounding makes ties.
  decisions = (scores > 0.2).astype(int)
  order = rng.permutation(labels.size)
  return labels[order], scores[order], domains[order], decisions[order]


def _table_of_units(seed):
  rng = np.random.default_rng(seed)
  return {t: {s: _unit(rng) for s in SECTIONS} for t in TYPES}


def _detection(y_true, decisions):
  tn, fp, fn, tp = sk.confusion_matrix(y_true, decisions).ravel()
  prec = tp / np.maximum(tp + fp, EPS)
  recall = tp / np.maximum(tp + fn, EPS)
  f1 = 2.0 * prec * recall / np.maximum(prec + recall, EPS)
  return prec, recall, f1


def _oracle_section(year, labels, scores, domains, decisions):
  """The metrics as the year's evaluator (and baseline) compute them."""
  if year == 2020:
    # evaluator.py: each id's clips together.
    return {
      'auc': sk.roc_auc_score(labels, scores),
      'pauc': sk.roc_auc_score(labels, scores, max_fpr=0.1),
    }
  out = {}
  if year > 2021:
    out['auc'] = sk.roc_auc_score(labels, scores)
    out['pauc'] = sk.roc_auc_score(labels, scores, max_fpr=0.1)
  for d in ('source', 'target'):
    own = domains == d
    if year == 2021:
      # One ground-truth file per (section, domain) holds its clips only.
      auc_clips = own
    else:
      auc_clips = own | (labels != 0)
    out[f'auc_{d}'] = sk.roc_auc_score(labels[auc_clips], scores[auc_clips])
    out[f'pauc_{d}'] = sk.roc_auc_score(labels[own], scores[own], max_fpr=0.1)
    prec, recall, f1 = _detection(labels[own], decisions[own])
    out[f'precision_{d}'] = prec
    out[f'recall_{d}'] = recall
    out[f'f1_{d}'] = f1
  return out


def _section(year, labels, scores, domains, decisions):
  if year == 2020:
    return official_score.section_metrics(2020, labels, scores)
  return official_score.section_metrics(
    year, labels, scores, domains, decisions
  )


def _oracle_official(year, table):
  """The official score as the evaluators assemble it from their tables."""
  types = sorted(table)
  if year == 2021:
    # performance_over_all: rows over types, domains, sections; [:, 0:2].
    rows = [
      [table[t][s][f'auc_{d}'], table[t][s][f'pauc_{d}']]
      for t in types
      for d in ('source', 'target')
      for s in sorted(table[t])
    ]
    return stats.hmean(np.maximum(np.array(rows), EPS), axis=None)
  rows = [table[t][s] for t in types for s in sorted(table[t])]
  values = (
    [r['auc_source'] for r in rows]
    + [r['auc_target'] for r in rows]
    + [r['pauc'] for r in rows]
  )
  return stats.hmean(np.maximum(np.array([values]), EPS), axis=None)


@pytest.mark.parametrize('year', YEARS)
def test_section_metrics_match_the_evaluators(year):
  for seed in range(3):
    for t, by_section in _table_of_units(seed).items():
      for s, unit in by_section.items():
        got = _section(year, *unit)
        assert got == _oracle_section(year, *unit), (seed, t, s)


@pytest.mark.parametrize('year', DOMAIN_YEARS)
def test_official_score_matches_the_evaluators(year):
  units = _table_of_units(seed=year)
  table = {
    t: {s: _section(year, *u) for s, u in by_s.items()}
    for t, by_s in units.items()
  }
  assert official_score.official_score(year, table) == _oracle_official(
    year, table
  )


def test_the_clip_sets_matter():
  """Each year's clip set gives its own number on the test data.

  So the tests above would fail if a rule took the wrong clips.
  """
  labels, scores, domains, _ = _table_of_units(0)['fan']['00']
  source = domains == 'source'
  with_anomalies = source | (labels == 1)
  auc_2021 = official_score.section_metrics(2021, labels, scores, domains)
  auc_2022 = official_score.section_metrics(2022, labels, scores, domains)
  assert auc_2021['auc_source'] == sk.roc_auc_score(
    labels[source], scores[source]
  )
  assert auc_2022['auc_source'] == sk.roc_auc_score(
    labels[with_anomalies], scores[with_anomalies]
  )
  assert auc_2021['auc_source'] != auc_2022['auc_source']
  # pAUC of the whole section is not the source domain's pAUC.
  assert auc_2022['pauc'] != auc_2022['pauc_source']

  table = {'fan': {'00': auc_2022}}
  wrong = dict(auc_2022, pauc=auc_2022['pauc_source'])
  assert official_score.official_score(2022, table) != (
    official_score.official_score(2022, {'fan': {'00': wrong}})
  )


def _oracle_jackknife_ci95(y_true, y_pred):
  """The evaluators' jackknife_estimate, restated; returns its ci95."""
  n = len(y_true)

  def ci95(fn):
    thetas = [fn(np.delete(y_true, i), np.delete(y_pred, i)) for i in range(n)]
    mean = np.mean(thetas)
    sigma = np.sqrt(np.sum([(th - mean) ** 2 for th in thetas]) / (n * (n - 1)))
    return np.abs(stats.t.ppf((1 - 0.95) / 2, n - 1)) * sigma

  auc = ci95(sk.roc_auc_score)
  pauc = ci95(lambda a, b: sk.roc_auc_score(a, b, max_fpr=0.1))
  return np.mean([auc, pauc])


@pytest.fixture(name='pooled', scope='module')
def fixture_pooled():
  """Every clip of every type and section, and the evaluators' ci95 of it.

  The oracle is slow, and the rule is the same each year, so it runs once.
  """
  units = _table_of_units(seed=7)
  cells = [units[t][s] for t in sorted(units) for s in sorted(units[t])]
  labels = np.concatenate([c[0] for c in cells])
  scores = np.concatenate([c[1] for c in cells])
  return labels, scores, _oracle_jackknife_ci95(labels, scores)


@pytest.mark.parametrize('year', YEARS[2:])
def test_ci95_matches_the_evaluators_jackknife(pooled, year):
  labels, scores, want = pooled
  got = official_score.official_score_ci95(year, labels, scores)
  assert got == want
  assert 0 < got < 0.05


def test_a_zero_auc_is_clamped_not_an_error():
  labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
  domains = np.repeat(['source', 'target'], 4)
  # Every source normal outscores every anomaly: AUC(source) is 0.
  scores = np.array([9.0, 8.0, 1.0, 2.0, 0.0, 3.0, 1.0, 2.0])
  unit = official_score.section_metrics(2023, labels, scores, domains)
  assert unit['auc_source'] == 0.0
  table = {'fan': {'00': unit}}
  got = official_score.official_score(2023, table)
  assert got == _oracle_official(2023, table)
  assert 0 < got < 10 * EPS


# Published baseline (MSE) figures, each type's single section: AUC(source),
# AUC(target), pAUC, and the official score, from the READMEs of
# nttcslab/dcase2024_task2_evaluator, dcase2025_task2_evaluator and
# dcase2026_task2_evaluator. They also show that 2026 keeps the 2023 rules.
PUBLISHED = {
  2024: (
    {
      '3DPrinter': (0.7912, 0.47959999999999997, 0.4942105263157895),
      'AirCompressor': (0.65, 0.4824, 0.5547368421052632),
      'Scanner': (0.6916, 0.5374000000000001, 0.5010526315789474),
      'ToyCircuit': (0.7658, 0.5266000000000001, 0.5),
      'HoveringDrone': (
        0.8601999999999999,
        0.43879999999999997,
        0.5021052631578947,
      ),
      'HairDryer': (0.6224000000000001, 0.4598, 0.5163157894736842),
      'ToothBrush': (0.7504000000000001, 0.6948, 0.5273684210526316),
      'RoboticArm': (0.6596, 0.4152, 0.511578947368421),
      'BrushlessMotor': (0.7070000000000001, 0.6352, 0.5557894736842105),
    },
    0.5650830191796572,
  ),
  2025: (
    {
      'AutoTrash': (0.8102, 0.3436, 0.5421052631578948),
      'HomeCamera': (0.8140000000000001, 0.4976, 0.5284210526315789),
      'ToyPet': (0.677, 0.36699999999999994, 0.55),
      'ToyRCCar': (0.5284, 0.6271999999999999, 0.5552631578947368),
      'BandSealer': (0.7198, 0.3956, 0.5205263157894737),
      'CoffeeGrinder': (0.7303999999999999, 0.4436, 0.5342105263157895),
      'Polisher': (0.6686000000000001, 0.443, 0.5231578947368422),
      'ScrewFeeder': (0.6486, 0.6592, 0.6210526315789474),
    },
    0.5442827820713174,
  ),
  2026: (
    {
      'ToyDrone': (0.7126000000000001, 0.468, 0.5510526315789473),
      'ToothBrush': (0.5902, 0.6434000000000001, 0.5978947368421053),
      'SewingMachine': (0.6484, 0.6142, 0.5810526315789474),
      'BlowerDustCollector': (
        0.6948000000000001,
        0.8837999999999999,
        0.6178947368421053,
      ),
      'Sander': (0.6714, 0.4402, 0.5089473684210526),
    },
    0.5980289616592438,
  ),
}


@pytest.mark.parametrize('year', sorted(PUBLISHED))
def test_published_baseline_scores(year):
  by_type, published = PUBLISHED[year]
  table = {
    t: {'00': dict(zip(('auc_source', 'auc_target', 'pauc'), v))}
    for t, v in by_type.items()
  }
  # Older scipy summed the reciprocals in another order, which moves the
  # last bits of a 27-term mean; 1e-14 is tens of float64 ulps.
  np.testing.assert_allclose(
    official_score.official_score(year, table), published, rtol=1e-14
  )


def test_type_averages_are_2020s_arithmetic_means():
  units = _table_of_units(seed=3)
  table = {
    t: {s: _section(2020, *u) for s, u in by_s.items()}
    for t, by_s in units.items()
  }
  per_type, overall = official_score.type_averages(table)
  for key in ('auc', 'pauc'):
    means = [np.mean([table[t][s][key] for s in table[t]]) for t in table]
    assert [per_type[t][key] for t in table] == means
    assert overall[key] == np.mean(means)


@pytest.mark.parametrize('year', (2019, 2027, '2023', 2023.0, True, None))
def test_unknown_year_names_the_setting(year):
  labels, scores, domains, _ = _table_of_units(0)['fan']['00']
  with pytest.raises(AeasdError, match=r'config\.data\.dcase_year.*2020.*2026'):
    official_score.section_metrics(year, labels, scores, domains)


@pytest.mark.parametrize('year', DOMAIN_YEARS)
@pytest.mark.parametrize('label', (0, 1))
def test_a_domain_without_a_class_names_the_section(year, label):
  labels, scores, domains, _ = _table_of_units(0)['fan']['00']
  keep = (domains == 'source') | (labels != label)
  with pytest.raises(AeasdError, match='fan section_00.*target clips'):
    official_score.section_metrics(
      year, labels[keep], scores[keep], domains[keep], name='fan section_00'
    )


@pytest.mark.parametrize(
  ('year', 'change', 'match'),
  (
    (2020, lambda d, x: (np.full(d.shape, 'source'), None), 'no domains'),
    (2020, lambda d, x: (None, x), 'no decisions'),
    (2023, lambda d, x: (None, None), 'expected a domain per clip'),
    (
      2023,
      lambda d, x: (np.where(d == 'source', 'src', d), None),
      r"got \['src'\]",
    ),
    (2023, lambda d, x: (d, 2 * x), r'decisions 0 \(normal\) or 1'),
  ),
)
def test_bad_inputs_say_what_was_expected(year, change, match):
  labels, scores, domains, decisions = _table_of_units(0)['fan']['00']
  domains, decisions = change(domains, decisions)
  with pytest.raises(AeasdError, match=f'fan section_00: .*{match}'):
    official_score.section_metrics(
      year, labels, scores, domains, decisions, name='fan section_00'
    )


def test_official_score_refuses_what_the_evaluator_lacks():
  with pytest.raises(AeasdError, match='2020 evaluator reports no single'):
    official_score.official_score(2020, {'fan': {'00': {'auc': 0.5}}})
  with pytest.raises(AeasdError, match='fan 00 has auc_target=None'):
    official_score.official_score(
      2023, {'fan': {'00': {'auc_source': 0.5, 'pauc': 0.5}}}
    )
  with pytest.raises(AeasdError, match='2021 evaluator reports no'):
    official_score.official_score_ci95(2021, [0, 1, 0, 1], [0, 1, 1, 0])
