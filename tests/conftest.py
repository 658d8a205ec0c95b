"""Test settings: CPU, fast compiles, and the shared tiny synthetic dataset."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Compile time dominates these tiny programs on a CPU.
jax.config.update("jax_disable_most_optimizations", True)

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from aeasd_jax import synth  # pylint: disable=g-import-not-at-top,wrong-import-position
import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
  """A small synthetic DCASE dataset shared by the whole session."""
  return synth.generate(
    tmp_path_factory.mktemp("synth") / "data",
    seed=0,
    clips_per_id=4,
    seconds=1.0,
  )


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_config(tiny_root, session_cache_dir):
  """A fresh tiny config per test (helpers.tiny_config), free to change."""
  return helpers.tiny_config(tiny_root, session_cache_dir)


# Trainings that differ only in the order of their sums (devices, vmapped
# models), compared in float64. A sum of n terms in any order is within
# n * eps * sum(|terms|) of the exact one (Higham, Accuracy and Stability of
# Numerical Algorithms, 2002, chapter 4); the tiny config's longest sums are
# over the batch (64) and the first layer's inputs (5 frames x 16 mels = 80).
# To first order a training adds that error up over its steps (14: 2 epochs
# of 7), scaled by at most lr / adam_eps = 1 in Adam's update (with
# test_train.ADAM_EPS_FOR_EQUIVALENCE), by the raw dB features (|x| <= 100)
# in the first layer's gradient, and by 1 / sqrt(bn_epsilon) ~ 32 where
# BatchNorm divides by a standard deviation. Relative to a value's scale (1
# for weights, up to 100 for BatchNorm's running statistics), that is
# 2.2e-16 * 144 * 14 * 100 * 32 = 1.4e-9. The runs differ by about 2e-15;
# BatchNorm on per-device statistics moves the weights by 1e-2 and more.
FLOAT64_REORDERING_TOLERANCE = (
  np.finfo(np.float64).eps * (64 + 80) * 14 * 100 * 32
)


@pytest.fixture
def x64():
  """JAX with float64 for one test, for config.model.compute_dtype="float64".

  Set globally, not by the thread-local jax.enable_x64: training compiles on a
  worker thread.
  """
  before = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", before)


@pytest.fixture(scope="session")
def assert_same_training():
  """Asserts two float64 trainings' weight trees equal up to summation order."""

  def check(a, b):
    def close(path, x, y):
      assert x.dtype == y.dtype == np.float64, jax.tree_util.keystr(path)
      np.testing.assert_allclose(
        y,
        x,
        rtol=FLOAT64_REORDERING_TOLERANCE,
        atol=FLOAT64_REORDERING_TOLERANCE,
        err_msg=jax.tree_util.keystr(path),
      )

    jax.tree_util.tree_map_with_path(close, a, b)

  return check
