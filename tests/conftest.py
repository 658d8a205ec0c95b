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
import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position


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
  """A fresh tiny config per test (helpers.tiny_config), free to change."""
  return helpers.tiny_config(tiny_root, session_cache_dir)
