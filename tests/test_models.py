"""The networks: parameter counts against the reference models, and shapes."""

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from aeasd_jax import models
from configs import default


def _count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
  "name,expected",
  [
    # ../shared/reference/ANCHORS.md: the PyTorch baseline modules.
    ("AE", 267_928),
    ("IDNN", 185_496),
  ],
)
def test_parameter_count_matches_reference(name, expected):
  config = default.get_config().model
  config.name = name
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  assert _count(model) == expected


def test_vae_adds_a_log_variance_head_to_the_ae():
  config = default.get_config().model
  config.name = "AE"
  ae = _count(models.build(config, nnx.Rngs(0)))
  config.name = "VAE"
  vae = _count(models.build(config, nnx.Rngs(0)))
  # AE: Dense(128->8) + BN(8). VAE: two Dense(128->8) heads, no BN.
  assert vae - ae == (128 * 8 + 8) - 2 * 8


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_shapes_and_kl(name):
  config = default.get_config().model
  config.name = name
  model = models.build(config, nnx.Rngs(0))
  in_features, out_features = models.io_sizes(config)
  x = jnp.ones((7, in_features))
  for train in (True, False):
    y, kl = model(x, train=train, key=jax.random.key(1))
    chex.assert_shape(y, (7, out_features))
    chex.assert_shape(kl, (7,))
    if models.MODELS[name].network is models.Autoencoder:
      assert float(jnp.abs(kl).max()) == 0.0
    else:
      assert bool(jnp.all(kl >= 0))
  expected = {
    "AE": (640, 640),
    "VAE": (640, 640),
    "IDNN": (512, 128),
    "VIDNN": (512, 128),
  }[name]
  assert (in_features, out_features) == expected


def test_vae_scoring_decodes_the_mean():
  config = default.get_config().model
  config.name = "VAE"
  model = models.build(config, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (5, 640))
  a, _ = model(x, train=False, key=jax.random.key(1))
  b, _ = model(x, train=False, key=jax.random.key(2))
  c, _ = model(x, train=True, key=jax.random.key(1))
  d, _ = model(x, train=True, key=jax.random.key(2))
  chex.assert_trees_all_equal(a, b)
  assert float(jnp.abs(c - d).max()) > 0


def test_bfloat16_compute_keeps_float32_parameters_and_output():
  config = default.get_config().model
  config.compute_dtype = "bfloat16"
  model = models.build(config, nnx.Rngs(0))
  config.compute_dtype = "float32"
  reference = models.build(config, nnx.Rngs(0))
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    assert leaf.dtype == jnp.float32
  x = jax.random.normal(jax.random.key(0), (64, 640)) * 10 - 40
  y, _ = model(x, train=True)
  y_ref, _ = reference(x, train=True)
  assert y.dtype == jnp.float32
  # Same weights, matmuls rounded to bfloat16 (8 bits of mantissa).
  assert float(jnp.abs(y - y_ref).max()) < 0.05 * float(jnp.abs(y_ref).max())
