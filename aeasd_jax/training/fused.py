"""The fused training step (stages M1 and M2 of benchmarks/NOTES.md).

Dense -> BatchNorm -> ReLU as one custom_vjp with a single statistics
reduction and a hand-written backward (M1, pure JAX; or M2, the Pallas
kernels of fused_pallas), and Adam over one flat buffer per model with the
inactive-model mask folded in; config.train.kernels picks the path.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree

from aeasd_jax.training import fused_pallas
from aeasd_jax.models import autoencoders
from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError

# config.train.kernels: "auto" picks per platform; nothing is measured faster
# than XLA yet, so it picks "xla" everywhere.
KERNELS = ("auto", "xla", "jax_fused", "pallas")
# What resolve_kernels gives for a fused step: "pallas_interpret" is "pallas"
# run in Pallas' interpret mode (config.train.pallas_interpret).
PALLAS_PATHS = ("pallas", "pallas_interpret")
FUSED_PATHS = ("jax_fused",) + PALLAS_PATHS
# The models whose network the fused step knows: the plain autoencoder.
FUSED_MODELS = ("AE", "IDNN")
# optax.adam's defaults, which state.make_setup trains with.
_B1, _B2 = 0.9, 0.999


def resolve_kernels(config):
  """The path config.train.kernels asks for: "xla" or one of FUSED_PATHS."""
  kernels = config.train.kernels
  if kernels == "auto":
    return "xla"
  if kernels != "xla" and config.model.name not in FUSED_MODELS:
    raise AeasdError(
      f"config.train.kernels={kernels!r} trains {', '.join(FUSED_MODELS)}"
      f" only, not config.model.name={config.model.name!r}; use 'xla' or"
      " 'auto'"
    )
  if kernels == "pallas":
    return fused_pallas.resolve(config)
  return kernels


def _sums(a, b):
  """(sum(a, 0), sum(b, 0)) as one variadic reduction: one pass, one kernel."""
  zero = jnp.zeros((), a.dtype)
  return jax.lax.reduce(
    (a, b), (zero, zero), lambda x, y: (x[0] + y[0], x[1] + y[1]), (0,)
  )


def _dense(x, kernel, bias, dtype):
  """nnx.Linear's forward: everything cast to the compute dtype first."""
  return x.astype(dtype) @ kernel.astype(dtype) + bias.astype(dtype)


def _block_forward(epsilon, dtype, x, kernel, bias, scale, offset):
  z = _dense(x, kernel, bias, dtype).astype(scale.dtype)
  n = z.shape[0]
  # Shifted data (Chan, Golub and LeVeque 1983): the sums of d = z - z[0]
  # and d**2 in one pass. The variance s2/n - (s1/n)**2 then loses only
  # about log10(1 + (z[0] - mean)**2 / var) digits, a row being within a
  # few standard deviations of the mean, where E[z**2] - E[z]**2 on raw dB
  # activations loses log10(1 + mean**2 / var) digits, several at the first
  # layer. The running mean as shift is 0 for the first hundreds of steps.
  d = z - z[:1]
  s1, s2 = _sums(d, d * d)
  shifted_mean = s1 / n
  mean = z[0] + shifted_mean
  # Biased, as nnx.BatchNorm normalises with and stores.
  var = jnp.maximum(s2 / n - shifted_mean * shifted_mean, 0)
  rstd = jax.lax.rsqrt(var + epsilon)
  x_hat = (z - mean) * rstd
  y = jnp.maximum(x_hat * scale + offset, 0)
  return (y, mean, var), (x, kernel, scale, x_hat, rstd, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def dense_bn_relu(epsilon, dtype, x, kernel, bias, scale, offset):
  """relu(batch_norm(x @ kernel + bias)) in training mode.

  Args:
    epsilon: BatchNorm's epsilon.
    dtype: the Dense layer's compute dtype; BatchNorm computes in the dtype
      of `scale` (float32, or float64).
    x: [batch, in] inputs.
    kernel, bias: the Dense parameters.
    scale, offset: BatchNorm's scale and bias.

  Returns:
    (y, mean, var): the activation and the batch's per-feature mean and
    biased variance, for the running statistics (not differentiated).
  """
  return _block_forward(epsilon, dtype, x, kernel, bias, scale, offset)[0]


def _block_backward(epsilon, dtype, residuals, cotangents):
  """The cotangents of x and the parameters from the activation's cotangent.

  With a = x_hat * scale + offset and y = relu(a): g_a = g_y where a > 0;
  d offset = sum(g_a) and d scale = sum(g_a * x_hat), one reduction; then
  dz = scale * rstd / n * (n * g_a - d offset - x_hat * d scale), and the
  Dense's cotangents from dz as for any matmul.
  """
  del epsilon
  x, kernel, scale, x_hat, rstd, y = residuals
  g_y = cotangents[0]  # The statistics only feed the running averages.
  g_a = jnp.where(y > 0, g_y, 0)
  d_offset, d_scale = _sums(g_a, g_a * x_hat)
  n = x_hat.shape[0]
  dz = (scale * rstd / n) * (n * g_a - d_offset - x_hat * d_scale)
  dz = dz.astype(dtype)
  x_c = x.astype(dtype)
  d_kernel = (x_c.T @ dz).astype(kernel.dtype)
  d_bias = jnp.sum(dz, 0).astype(kernel.dtype)
  d_x = (dz @ kernel.astype(dtype).T).astype(x.dtype)
  return d_x, d_kernel, d_bias, d_scale, d_offset


dense_bn_relu.defvjp(_block_forward, _block_backward)


def block_train(block, x, kernels="jax_fused"):
  """A autoencoders.DenseBlock in training mode; updates its running statistics.

  `kernels` in PALLAS_PATHS picks dense_bn_relu's Pallas twin; anything
  else dense_bn_relu.
  """
  norm = block.norm
  options = (norm.epsilon, block.dense.dtype)
  if kernels in PALLAS_PATHS:
    block_fn = fused_pallas.dense_bn_relu
    options += (kernels == "pallas_interpret",)
  else:
    block_fn = dense_bn_relu
  y, mean, var = block_fn(
    *options,
    x,
    block.dense.kernel[...],
    block.dense.bias[...],
    norm.scale[...],
    norm.bias[...],
  )
  momentum = norm.momentum
  norm.mean[...] = momentum * norm.mean[...] + (1 - momentum) * mean
  norm.var[...] = momentum * norm.var[...] + (1 - momentum) * var
  return y


def loss(setup, params, batch_stats, window):
  """steps.loss for the autoencoder, its blocks through block_train."""
  x, y = window_data.split_window(window, setup.interpolate)
  model = nnx.merge(setup.graphdef, params, batch_stats)
  if type(model) is not autoencoders.Autoencoder:  # pylint: disable=unidiomatic-typecheck
    raise AeasdError(
      f"config.train.kernels={setup.kernels!r} trains"
      f" {', '.join(FUSED_MODELS)} only, not a {type(model).__name__}"
    )
  for block in (*model.encoder, *model.decoder):
    x = block_train(block, x, setup.kernels)
  mse = jnp.mean((model.output(x) - y) ** 2)
  return mse, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def adam(learning_rate, eps, params, grads, opt_state, active):
  """optax.adam(learning_rate, eps=eps)'s step on one flat buffer.

  The same arithmetic as optax in the same order, on the raveled parameters,
  so each step is a few elementwise kernels instead of a few per leaf; an
  inactive model (`active` False) keeps its parameters and moments.
  """
  moments, *rest = opt_state
  flat_params, unravel = ravel_pytree(params)
  g = ravel_pytree(grads)[0]
  mu = (1 - _B1) * g + _B1 * ravel_pytree(moments.mu)[0]
  nu = (1 - _B2) * g**2 + _B2 * ravel_pytree(moments.nu)[0]
  count = moments.count
  count_inc = jnp.where(
    count < jnp.iinfo(count.dtype).max, count + 1, count
  )  # optax's safe_increment.
  mu_hat = mu / (1 - _B1**count_inc).astype(mu.dtype)
  nu_hat = nu / (1 - _B2**count_inc).astype(nu.dtype)
  update = -learning_rate * (mu_hat / (jnp.sqrt(nu_hat) + eps))
  new_params = (flat_params + update).astype(flat_params.dtype)
  keep = functools.partial(jnp.where, active)
  moments = moments._replace(
    count=keep(count_inc, count),
    mu=unravel(keep(mu, ravel_pytree(moments.mu)[0])),
    nu=unravel(keep(nu, ravel_pytree(moments.nu)[0])),
  )
  return unravel(keep(new_params, flat_params)), (moments, *rest)


def train_step(setup, params, batch_stats, opt_state, window, key, active=True):
  """steps.train_step on the fused path; `active` False makes it a no-op.

  The no-op is folded into the Adam update and the running statistics, so
  train_pass needs no separate masking pass over the state.
  """
  del key  # The autoencoder is deterministic.
  devices = setup.mesh.devices.size
  if setup.kernels in PALLAS_PATHS and devices > 1:
    # Each device would hold part of the batch rows, and its kernels'
    # statistics would miss the others'.
    raise AeasdError(
      f"config.train.kernels='pallas' trains on one device; this run has"
      f" {devices}: use 'jax_fused' or 'xla'"
    )
  (value, new_stats), grads = jax.value_and_grad(loss, 1, has_aux=True)(
    setup, params, batch_stats, window
  )
  params, opt_state = adam(
    setup.learning_rate, setup.adam_eps, params, grads, opt_state, active
  )
  batch_stats = jax.tree.map(
    functools.partial(jnp.where, active), new_stats, batch_stats
  )
  return (
    params,
    batch_stats,
    opt_state,
    {"loss": value, "finite": jnp.isfinite(value)},
  )
