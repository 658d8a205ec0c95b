"""The fused training step (config.train.kernels="jax_fused") equals XLA's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from aeasd_jax import config_check
from aeasd_jax import fused
from aeasd_jax import state as state_lib
from aeasd_jax import steps
from aeasd_jax import train
from aeasd_jax.errors import AeasdError
from test_train import ADAM_EPS_FOR_EQUIVALENCE

BATCH, FRAMES, MELS = 64, 5, 16
# One float64 step of the same sums in another order (and the shifted
# one-pass variance instead of two passes): n * eps * sum(|terms|) for the
# longest sums (64 rows, 80 inputs; Higham 2002, ch. 4), times the raw dB
# features (|x| <= 100) and 1 / sqrt(bn_epsilon) ~ 32 where BatchNorm divides
# by a standard deviation; relative to the largest value of each quantity,
# since a sum mixes a leaf's values (the dense biases' true gradient is 0,
# theirs is rounding noise of the others' size).
ONE_STEP_TOLERANCE = np.finfo(np.float64).eps * (BATCH + 80) * 100 * 32


def _setup(config, kernels):
  config.train.kernels = kernels
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  return state_lib.make_setup(config, ["fan"], mesh)


def _one_model(setup):
  state = state_lib.init_state(setup, state_lib.model_keys(0, ["fan"], 1))
  return jax.tree.map(
    lambda x: x[0], (state.params, state.batch_stats, state.opt_state)
  )


def _window():
  """Raw dB-like features: a large mean, as the first layer sees them."""
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(-50.0, 10.0, (BATCH, FRAMES, MELS)))


def _assert_close(expected, actual):
  """Each leaf within ONE_STEP_TOLERANCE of its tree's largest value."""
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(expected))

  def close(path, x, y):
    if x.dtype == np.int32:  # Adam's step count.
      np.testing.assert_array_equal(y, x)
      return
    assert x.dtype == y.dtype == np.float64, jax.tree_util.keystr(path)
    np.testing.assert_allclose(
      y,
      x,
      rtol=ONE_STEP_TOLERANCE,
      atol=ONE_STEP_TOLERANCE * scale,
      err_msg=jax.tree_util.keystr(path),
    )

  jax.tree_util.tree_map_with_path(close, expected, actual)


def _compare_one_step(config):
  """Asserts loss, gradients, Adam state and BatchNorm statistics agree."""
  config.model.compute_dtype = "float64"
  config.train.adam_eps = ADAM_EPS_FOR_EQUIVALENCE
  setup = _setup(config, "xla")
  params, batch_stats, opt_state = _one_model(setup)
  window, key = _window(), jax.random.key(0)

  def xla_loss(p):
    return steps.loss(setup, p, batch_stats, window, key)

  def fused_loss(p):
    return fused.loss(setup, p, batch_stats, window)

  (xla_value, xla_stats), xla_grads = jax.jit(
    jax.value_and_grad(xla_loss, has_aux=True)
  )(params)
  (value, stats), grads = jax.jit(jax.value_and_grad(fused_loss, has_aux=True))(
    params
  )
  np.testing.assert_allclose(value, xla_value, rtol=ONE_STEP_TOLERANCE)
  _assert_close(xla_grads, grads)
  _assert_close(xla_stats, stats)
  expected = jax.jit(lambda *a: steps.train_step(setup, *a))(
    params, batch_stats, opt_state, window, key
  )
  actual = jax.jit(lambda *a: fused.train_step(setup, *a))(
    params, batch_stats, opt_state, window, key
  )
  for x, y in zip(expected[:3], actual[:3]):
    _assert_close(x, y)


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("model", ["AE", "IDNN"])
def test_one_fused_step_equals_the_xla_step(tiny_config, model):
  tiny_config.model.name = model
  _compare_one_step(tiny_config)


def _mutant(forward=fused._block_forward, backward=fused._block_backward):  # pylint: disable=protected-access
  block = jax.custom_vjp(
    lambda eps, dtype, *args: forward(eps, dtype, *args)[0],
    nondiff_argnums=(0, 1),
  )
  block.defvjp(forward, backward)
  return block


def _two_pass_forward(
  epsilon, dtype, x, kernel, bias, scale, offset, *, axis, ddof=0
):
  """A block forward with two-pass statistics over `axis`."""
  z = fused._dense(x, kernel, bias, dtype).astype(scale.dtype)  # pylint: disable=protected-access
  mean = jnp.mean(z, axis, keepdims=True)
  var = jnp.var(z, axis, keepdims=True, ddof=ddof)
  rstd = jax.lax.rsqrt(var + epsilon)
  x_hat = (z - mean) * rstd
  y = jnp.maximum(x_hat * scale + offset, 0)
  # Running statistics of the features' shape, whatever `axis` reduced.
  mean, var = (jnp.mean(jnp.broadcast_to(s, z.shape), 0) for s in (mean, var))
  return (y, mean, var), (x, kernel, scale, x_hat, rstd, y)


def _no_relu_mask(epsilon, dtype, residuals, cotangents):
  *rest, y = residuals
  return fused._block_backward(  # pylint: disable=protected-access
    epsilon, dtype, (*rest, jnp.ones_like(y)), cotangents
  )


MUTANTS = {
  "unbiased variance": _mutant(
    lambda *a: _two_pass_forward(*a, axis=0, ddof=1)
  ),
  "statistics over features": _mutant(lambda *a: _two_pass_forward(*a, axis=1)),
  "no ReLU mask": _mutant(backward=_no_relu_mask),
}


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
def test_the_comparison_accepts_a_correct_two_pass_block(
  tiny_config, monkeypatch
):
  correct = _mutant(lambda *a: _two_pass_forward(*a, axis=0))
  monkeypatch.setattr(fused, "dense_bn_relu", correct)
  _compare_one_step(tiny_config)


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_comparison_rejects_a_wrong_block(tiny_config, monkeypatch, mutant):
  monkeypatch.setattr(fused, "dense_bn_relu", MUTANTS[mutant])
  with pytest.raises(AssertionError):
    _compare_one_step(tiny_config)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("active", [True, False])
def test_flat_adam_equals_optax_adam(active):
  rng = np.random.default_rng(1)
  params = {"a": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.ones(5)}
  optimizer = optax.adam(1e-3, eps=1e-8)
  opt_state = optimizer.init(params)
  for step in range(3):
    grads = jax.tree.map(lambda p: p * rng.normal(), params)  # pylint: disable=cell-var-from-loop
    updates, new_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if not active:
      new_params, new_state = params, opt_state
    got = fused.adam(1e-3, 1e-8, params, grads, opt_state, jnp.asarray(active))
    # The same operations in the same order: equal up to the rounding of a
    # fused multiply-add, a few units in the last place.
    chex.assert_trees_all_close(
      got, (new_params, new_state), rtol=4 * np.finfo(np.float64).eps
    )
    params, opt_state = new_params, new_state
    del step


def test_kernels_choice_is_checked(tiny_config):
  tiny_config.train.kernels = "auto"
  assert fused.resolve_kernels(tiny_config) == "xla"
  tiny_config.train.kernels = "pallas"
  with pytest.raises(AeasdError, match="config.train.kernels"):
    config_check.check_config(tiny_config)
  tiny_config.train.kernels = "jax_fused"
  tiny_config.model.name = "VAE"
  with pytest.raises(AeasdError, match=r"config.train.kernels='jax_fused'"):
    config_check.check_config(tiny_config)


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
def test_fused_training_equals_xla_training(
  tiny_config, tmp_path, assert_same_training
):
  # Two epochs on the tiny dataset, every model, in float64: the runs differ
  # only in the order of their sums (conftest's reordering tolerance).
  tiny_config.model.compute_dtype = "float64"
  tiny_config.train.adam_eps = ADAM_EPS_FOR_EQUIVALENCE
  tiny_config.train.checkpoint_every = 10
  weights = {}
  for kernels in ("xla", "jax_fused"):
    tiny_config.train.kernels = kernels
    train.train_and_evaluate(tiny_config, tmp_path / kernels)
    weights[kernels] = helpers.latest_weights(tmp_path / kernels)
  assert_same_training(weights["xla"], weights["jax_fused"])
