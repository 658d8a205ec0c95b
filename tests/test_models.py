"""The networks: parameter counts against the reference models, and shapes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aeasd_jax.models import autoencoders
from configs import default


def _count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
  "name,vae,expected",
  [
    # ../shared/reference/ANCHORS.md: the PyTorch baseline modules.
    ("AE", "reparameterised", 267_928),
    ("IDNN", "reparameterised", 185_496),
    # AE-ASD's VAE: the AE plus two more Dense-BN-ReLU(8) heads.
    ("VAE", "aeasd", 270_024),
  ],
)
def test_parameter_count_matches_reference(name, vae, expected):
  config = default.get_config().model
  config.name = name
  config.vae = vae
  model = nnx.eval_shape(lambda: autoencoders.build(config, nnx.Rngs(0)))
  assert _count(model) == expected


def test_vae_adds_a_log_variance_head_to_the_ae():
  config = default.get_config().model
  config.name = "AE"
  ae = _count(autoencoders.build(config, nnx.Rngs(0)))
  config.name = "VAE"
  vae = _count(autoencoders.build(config, nnx.Rngs(0)))
  # AE: Dense(128->8) + BN(8). VAE: two Dense(128->8) heads, no BN.
  assert vae - ae == (128 * 8 + 8) - 2 * 8


@pytest.mark.parametrize("vae", sorted(autoencoders.VAES))
@pytest.mark.parametrize("name", sorted(autoencoders.MODELS))
def test_shapes_and_kl(name, vae):
  config = default.get_config().model
  config.name = name
  config.vae = vae
  model = autoencoders.build(config, nnx.Rngs(0))
  in_features, out_features = autoencoders.io_sizes(config)
  x = jnp.ones((7, in_features))
  for train in (True, False):
    y, kl = model(x, train=train, key=jax.random.key(1))
    chex.assert_shape(y, (7, out_features))
    chex.assert_shape(kl, (7,))
    if not autoencoders.MODELS[name].variational:
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
  model = autoencoders.build(config, nnx.Rngs(0))
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
  model = autoencoders.build(config, nnx.Rngs(0))
  config.compute_dtype = "float32"
  reference = autoencoders.build(config, nnx.Rngs(0))
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    assert leaf.dtype == jnp.float32
  x = jax.random.normal(jax.random.key(0), (64, 640)) * 10 - 40
  y, _ = model(x, train=True)
  y_ref, _ = reference(x, train=True)
  assert y.dtype == jnp.float32
  # Same weights, matmuls rounded to bfloat16 (8 bits of mantissa).
  assert float(jnp.abs(y - y_ref).max()) < 0.05 * float(jnp.abs(y_ref).max())


def _uniform_checks(values, bound):
  """values look like independent draws of U(-bound, bound).

  Every value lies inside the bounds, the largest within a few expected gaps
  of them, and mean(w^2), the variance estimator when the mean is known to
  be 0, within 5 standard errors of bound^2 / 3. For U(-b, b), E w^4 = b^4/5,
  so that estimator's variance is (b^4/5 - b^4/9) / n = 4 b^4 / (45 n).
  """
  w = np.asarray(values, np.float64).ravel()
  n = w.size
  assert np.abs(w).max() <= bound
  # P(max |w| < b (1 - 20/n)) = (1 - 20/n)^n ~ exp(-20).
  assert np.abs(w).max() > bound * (1 - 20 / n)
  standard_error = math.sqrt(4 / (45 * n)) * bound**2
  assert abs(np.mean(w**2) - bound**2 / 3) < 5 * standard_error


def test_torch_init_is_torch_nn_linears():
  fan_in, fan_out = 1024, 1024
  kernel_init, bias_init = autoencoders.INITS["torch"](fan_in)
  bound = 1 / math.sqrt(fan_in)
  _uniform_checks(
    kernel_init(jax.random.key(0), (fan_in, fan_out), jnp.float32), bound
  )
  # The bias has fan_out values only; the same checks hold at its size.
  _uniform_checks(bias_init(jax.random.key(1), (fan_out,), jnp.float32), bound)


def test_keras_init_is_glorot_uniform_and_zero_bias():
  fan_in, fan_out = 1024, 512
  kernel_init, bias_init = autoencoders.INITS["keras"](fan_in)
  _uniform_checks(
    kernel_init(jax.random.key(0), (fan_in, fan_out), jnp.float32),
    math.sqrt(6 / (fan_in + fan_out)),
  )
  bias = bias_init(jax.random.key(1), (fan_out,), jnp.float32)
  assert float(jnp.abs(bias).max()) == 0.0


@pytest.mark.parametrize("init", sorted(autoencoders.INITS))
@pytest.mark.parametrize("name", ["AE", "VAE"])
def test_config_init_reaches_every_dense_layer(name, init):
  config = default.get_config().model
  config.name, config.vae, config.init = name, "aeasd", init
  model = autoencoders.build(config, nnx.Rngs(0))
  dense = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear)]
  # Encoder and decoder blocks, the output; the AE's bottleneck or the VAE's
  # three heads.
  heads = {"AE": 1, "VAE": 3}[name]
  assert len(dense) == 2 * config.depth + 1 + heads
  for layer in dense:
    kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    fan_in, fan_out = kernel.shape
    if init == "torch":
      bound = 1 / math.sqrt(fan_in)
      assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0
    else:
      bound = math.sqrt(6 / (fan_in + fan_out))
      assert np.abs(bias).max() == 0
    assert np.abs(kernel).max() <= bound


def test_aeasd_vae_is_deterministic_and_decodes_its_formula():
  config = default.get_config().model
  config.name, config.vae = "VAE", "aeasd"
  model = autoencoders.build(config, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (32, 640))
  for train in (True, False):
    # No noise: the key changes nothing, in training too.
    a, kl_a = model(x, train=train, key=jax.random.key(1))
    b, kl_b = model(x, train=train, key=jax.random.key(2))
    chex.assert_trees_all_equal((a, kl_a), (b, kl_b))
    h = x
    for block in model.encoder:
      h = block(h, train=train)
    mu = model.mean(h, train=train)
    log_variance = model.log_variance(h, train=train)
    z = model.z(h, train=train) * jnp.exp(log_variance / 2) + mu
    for block in model.decoder:
      z = block(z, train=train)
    chex.assert_trees_all_close(a, model.output(z), rtol=1e-6, atol=1e-6)
    kl = -0.5 * jnp.sum(1 + log_variance - jnp.exp(log_variance) - mu**2, -1)
    chex.assert_trees_all_close(kl_a, kl, rtol=1e-6, atol=1e-6)
