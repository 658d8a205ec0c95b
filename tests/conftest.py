"""Test settings: CPU, fast compiles, and the shared tiny synthetic dataset."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Compile time dominates these tiny programs on a CPU.
jax.config.update("jax_disable_most_optimizations", True)

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from aeasd_jax import synth  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
  """A small synthetic DCASE dataset shared by the whole session."""
  return synth.generate(tmp_path_factory.mktemp("synth") / "data", seed=0,
                        clips_per_id=4, seconds=1.0)


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_config(tiny_root, session_cache_dir):
  """A fast config: a small network and few epochs on the tiny dataset.

  Returns a fresh ConfigDict per test, so tests may change it freely.
  """
  config = default.get_config()
  config.data.root = str(tiny_root)
  config.data.cache_dir = str(session_cache_dir)
  config.compile_cache_dir = "off"
  config.features.n_mels = 16
  config.model.hidden = 16
  config.model.depth = 2
  config.model.bottleneck = 4
  config.train.epochs = 2
  config.train.batch_size = 64
  config.train.checkpoint_every = 1
  config.score.batch_windows = 256
  return config
