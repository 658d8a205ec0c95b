"""Detection quality on a reduced synthetic dataset, with the baseline network.

The stationary machine (fan) must be clearly detected by both models, and on
the impulsive valve, whose anomalies change click timing but not the long-term
spectrum, IDNN must beat the AE, as the IDNN paper reports for
non-stationary machines.
"""

import numpy as np
import pytest

from aeasd_jax.evaluation import evaluate
from aeasd_jax import synth
from aeasd_jax.training import train


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
  from configs import default  # pylint: disable=g-import-not-at-top

  base = tmp_path_factory.mktemp("quality")
  root = synth.generate(
    base / "data",
    seed=0,
    clips_per_id=24,
    seconds=2.0,
    machine_types=("fan", "valve"),
  )
  result = {}
  for name in ("AE", "IDNN"):
    config = default.get_config()
    config.data.root = str(root)
    config.data.cache_dir = str(base / "cache")
    config.compile_cache_dir = "off"
    config.model.name = name
    config.train.epochs = 20
    train.train_and_evaluate(config, base / name)
    report = evaluate.evaluate(base / name)
    result[name] = {
      t: np.mean([m["auc"] for m in by_id.values()])
      for t, by_id in report["dev"].items()
    }
  return result


def test_stationary_machine_is_clearly_detected(tables):
  assert tables["AE"]["fan"] >= 0.8
  assert tables["IDNN"]["fan"] >= 0.8


def test_idnn_beats_ae_on_the_impulsive_machine(tables):
  assert tables["IDNN"]["valve"] > tables["AE"]["valve"]
