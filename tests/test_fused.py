"""The fused training steps (config.train.kernels "jax_fused" and "pallas",
the latter in Pallas' interpret mode off a GPU) equal XLA's."""

import dataclasses
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from aeasd_jax.training import config_check
from aeasd_jax.training import fused
from aeasd_jax.training import fused_pallas
from aeasd_jax.training import state as state_lib
from aeasd_jax.training import steps
from aeasd_jax.training import train
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


def _pallas(config, monkeypatch):
  """config.train.kernels="pallas" on tiles so small that every loop of the
  kernels runs more than once: 4 row tiles of the batch, 2 feature blocks of
  the hidden layers (32 wide), 5 input tiles of the first layer (80 inputs),
  and the 4-wide bottleneck padded to 16. Interpret mode, except on a GPU,
  where the compiled Triton kernels run (benchmarks/gpu_session.sh)."""
  config.train.kernels = "pallas"
  config.train.pallas_interpret = jax.default_backend() != "gpu"
  config.model.hidden = 2 * fused_pallas.FEATURE_BLOCK
  monkeypatch.setattr(fused_pallas, "ROW_TILE", BATCH // 4)


def _compare_one_step(config, kernels="jax_fused"):
  """Asserts loss, gradients, Adam state and BatchNorm statistics agree.

  fused.loss and fused.train_step, on the path `kernels` names ("pallas"
  after _pallas), against steps.loss and steps.train_step, which ignore it.
  """
  config.model.compute_dtype = "float64"
  config.train.adam_eps = ADAM_EPS_FOR_EQUIVALENCE
  setup = _setup(config, kernels)
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


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
def test_one_pallas_step_equals_the_xla_step(tiny_config, monkeypatch):
  # The kernels' sums run in other orders (row tiles, input tiles) than
  # XLA's, with the same two-pass variance: ONE_STEP_TOLERANCE's bound. The
  # AE only: IDNN's blocks are the same kernels on another input width.
  _pallas(tiny_config, monkeypatch)
  _compare_one_step(tiny_config, "pallas")


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


def _tile_sums_over_features(t):
  """The kernels' per-feature sums taken over a tile's features instead."""
  if t.shape[0] != t.shape[1]:  # Not AssertionError, which would pass.
    raise ValueError(f"{t.shape}: expected _pallas's 16 x 16 tiles")
  return jnp.sum(t, axis=1, keepdims=True).T


# (path, mistake): (module, name, wrong value). The same three mistakes in
# the pure-JAX block and in the Pallas kernels' shared numerics.
MUTANTS = {
  ("jax_fused", "unbiased variance"): (
    fused,
    "dense_bn_relu",
    _mutant(lambda *a: _two_pass_forward(*a, axis=0, ddof=1)),
  ),
  ("jax_fused", "statistics over features"): (
    fused,
    "dense_bn_relu",
    _mutant(lambda *a: _two_pass_forward(*a, axis=1)),
  ),
  ("jax_fused", "no ReLU mask"): (
    fused,
    "dense_bn_relu",
    _mutant(backward=_no_relu_mask),
  ),
  ("pallas", "unbiased variance"): (
    fused_pallas,
    "_variance",
    lambda square_sum, n: square_sum / (n - 1),
  ),
  ("pallas", "statistics over features"): (
    fused_pallas,
    "_feature_sums",
    _tile_sums_over_features,
  ),
  ("pallas", "no ReLU mask"): (fused_pallas, "_relu_mask", lambda y, g: g),
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
@pytest.mark.parametrize("kernels, mutant", sorted(MUTANTS))
def test_the_comparison_rejects_a_wrong_block(
  tiny_config, monkeypatch, kernels, mutant
):
  if kernels == "pallas":
    _pallas(tiny_config, monkeypatch)
  monkeypatch.setattr(*MUTANTS[kernels, mutant])
  with pytest.raises(AssertionError):
    _compare_one_step(tiny_config, kernels)


def _compare_bfloat16_gradients(config, kernels):
  """Asserts the loss and gradients agree with XLA's in bfloat16 compute.

  Both paths round each block's matmul inputs to bfloat16 and sum in float32,
  but at other places and in other orders, so an input of the next block can
  land one bfloat16 ulp (2**-8 relative) apart wherever the float32 values
  straddle a rounding boundary. BatchNorm keeps each block's gain near 1, so
  such a difference grows by at most one ulp per block forward and again per
  block backward: 2 * blocks * 2**-8 of each tree's largest value.
  """
  config.model.compute_dtype = "bfloat16"
  setup = _setup(config, kernels)
  params, batch_stats, _ = _one_model(setup)
  window, key = _window().astype(jnp.float32), jax.random.key(0)
  blocks = 2 * config.model.depth + 1
  tolerance = 2 * blocks * 2.0**-8
  xla_value, xla_grads = jax.jit(
    jax.value_and_grad(
      lambda p: steps.loss(setup, p, batch_stats, window, key)[0]
    )
  )(params)
  value, grads = jax.jit(
    jax.value_and_grad(lambda p: fused.loss(setup, p, batch_stats, window)[0])
  )(params)
  np.testing.assert_allclose(value, xla_value, rtol=tolerance)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(xla_grads))
  for x, y in zip(jax.tree.leaves(xla_grads), jax.tree.leaves(grads)):
    assert x.dtype == y.dtype == np.float32  # Parameters stay float32.
    np.testing.assert_allclose(y, x, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("kernels", ["jax_fused", "pallas"])
def test_bfloat16_fused_gradients_follow_xla(tiny_config, monkeypatch, kernels):
  if kernels == "pallas":
    _pallas(tiny_config, monkeypatch)
  _compare_bfloat16_gradients(tiny_config, kernels)
  # The bound is loose enough for rounding, not for a wrong backward.
  monkeypatch.setattr(*MUTANTS[kernels, "no ReLU mask"])
  with pytest.raises(AssertionError):
    _compare_bfloat16_gradients(tiny_config, kernels)


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


def _triton_calls(lowered):
  """[(programs, Triton IR verifies)] of each Pallas Triton custom call."""
  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir
  from jax._src.pallas.triton import lowering
  # pylint: enable=g-import-not-at-top

  calls = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          attributes = inner.operation.attributes
          if "call_target_name" in attributes and "triton" in str(
            attributes["call_target_name"]
          ):
            config = attributes["mhlo.backend_config"]
            grid = np.prod(
              [ir.IntegerAttr(config[f"grid_{axis}"]).value for axis in "xyz"]
            )
            module = ir.StringAttr(config["ir"]).value_bytes
            with lowering._new_ir_context():  # pylint: disable=protected-access
              verifies = ir.Module.parse(module).operation.verify()
            calls.append((grid, verifies))
          walk(inner.operation)

  walk(lowered.compiler_ir("stablehlo").operation)
  return calls


@pytest.mark.skipif(
  not jax.__version__.startswith("0.10."),
  reason="JAX 0.10 lowers Pallas' Triton kernels without a GPU; from 0.11"
  " the lowering compiles them, which needs the CUDA plugin",
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("inputs, features", [(640, 128), (128, 8), (8, 128)])
def test_pallas_block_lowers_to_one_triton_launch_per_kernel(
  dtype, inputs, features
):
  """The AE's layer shapes at batch 512 for 6 models lower for CUDA.

  What the CPU can check of the GPU path: Triton's tile rules hold (the
  lowering refuses non-power-of-two loads, the Triton verifier bad ops),
  and forward and backward are one launch each for all models. Compiling
  the Triton IR and running it need a GPU.
  """

  def block_loss(x, kernel, bias, scale, offset):
    y = fused_pallas.dense_bn_relu(
      1e-3, jnp.dtype(dtype), False, x, kernel, bias, scale, offset
    )[0]
    return jnp.sum(y)

  models = 6
  shapes = [(512, inputs), (inputs, features)] + [(features,)] * 3
  args = [jax.ShapeDtypeStruct((models,) + s, jnp.float32) for s in shapes]
  step = jax.vmap(jax.value_and_grad(block_loss, range(5)))
  lowered = jax.jit(step).trace(*args).lower(lowering_platforms=("cuda",))
  programs = models * -(-features // fused_pallas.FEATURE_BLOCK)
  assert _triton_calls(lowered) == [(programs, True)] * 2


def test_kernels_choice_is_checked(tiny_config, monkeypatch):
  tiny_config.train.kernels = "auto"
  assert fused.resolve_kernels(tiny_config) == "xla"
  tiny_config.train.kernels = "triton"
  with pytest.raises(AeasdError, match="config.train.kernels"):
    config_check.check_config(tiny_config)
  # Off a GPU the kernels run in interpret mode only, and only when asked.
  tiny_config.train.kernels = "pallas"
  if jax.default_backend() == "gpu":
    assert fused.resolve_kernels(tiny_config) == "pallas"
  else:
    with pytest.raises(
      AeasdError,
      match=r"config.train.kernels='pallas'.*'cpu'.*pallas_interpret",
    ):
      config_check.check_config(tiny_config)
  # A JAX whose Triton backend the kernels were not written for.
  for version in ("0.10.1", "0.13.0"):
    with monkeypatch.context() as patch:
      patch.setattr(jax, "__version__", version)
      with pytest.raises(
        AeasdError, match=rf"jax >= 0.10.2, < 0.13.* {version}"
      ):
        config_check.check_config(tiny_config)
  tiny_config.train.pallas_interpret = True
  config_check.check_config(tiny_config)
  assert fused.resolve_kernels(tiny_config) == "pallas_interpret"
  tiny_config.train.batch_size = 72
  with pytest.raises(AeasdError, match="config.train.batch_size=72"):
    config_check.check_config(tiny_config)
  for kernels in ("jax_fused", "pallas"):
    tiny_config.train.kernels = kernels
    tiny_config.model.name = "VAE"
    with pytest.raises(AeasdError, match=f"config.train.kernels='{kernels}'"):
      config_check.check_config(tiny_config)


def test_pallas_refuses_several_devices(tiny_config):
  # Each device's kernels would see only its slice of the batch rows.
  tiny_config.train.kernels = "pallas"
  tiny_config.train.pallas_interpret = True
  setup = _setup(tiny_config, "pallas")
  model = _one_model(setup)
  setup = dataclasses.replace(
    setup, mesh=types.SimpleNamespace(devices=np.empty(8))
  )
  with pytest.raises(AeasdError, match="'pallas' trains on one device.* 8"):
    fused.train_step(setup, *model, _window(), jax.random.key(0))


@pytest.mark.numerics
@pytest.mark.usefixtures("x64")
def test_fused_training_equals_xla_training(
  tiny_config, tmp_path, monkeypatch, assert_same_training
):
  # Two epochs on the tiny dataset, every model, in float64: the runs differ
  # only in the order of their sums (conftest's reordering tolerance). The
  # Pallas kernels run vmapped over the models: the model axis joins their
  # grid, as on a GPU.
  _pallas(tiny_config, monkeypatch)
  tiny_config.model.compute_dtype = "float64"
  tiny_config.train.adam_eps = ADAM_EPS_FOR_EQUIVALENCE
  tiny_config.train.checkpoint_every = 10
  # Which runs traced the Pallas blocks: the pallas run only, or the test
  # would compare XLA with itself.
  traced, block = [], fused_pallas.dense_bn_relu
  monkeypatch.setattr(
    fused_pallas, "dense_bn_relu", lambda *a: traced.append(a) or block(*a)
  )
  weights, pallas_blocks = {}, {}
  for kernels in ("xla", "jax_fused", "pallas"):
    tiny_config.train.kernels = kernels
    train.train_and_evaluate(tiny_config, tmp_path / kernels)
    weights[kernels] = helpers.latest_weights(tmp_path / kernels)
    pallas_blocks[kernels] = len(traced)
    traced.clear()
  # The tiny AE's 3 encoder and 2 decoder blocks, each traced at least once.
  assert pallas_blocks["xla"] == pallas_blocks["jax_fused"] == 0
  assert pallas_blocks["pallas"] >= 5
  assert_same_training(weights["xla"], weights["jax_fused"])
  assert_same_training(weights["xla"], weights["pallas"])
