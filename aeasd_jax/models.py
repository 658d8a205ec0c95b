"""The detectors in Flax NNX: the DCASE baseline autoencoder, its VAE, IDNN.

IDNN and VIDNN are the same networks fed the context frames and asked for the
centre frame; the registry at the bottom maps config names to both facts.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

# Keras' Dense default, which the DCASE baseline trained with.
_KERNEL_INIT = nnx.initializers.glorot_uniform()


def wide_dtype(compute_dtype):
  """The dtype of parameters, BatchNorm statistics, the output and the loss.

  float32 for float32 and bfloat16 compute; float64 computes all in float64,
  so that equivalence tests can compare runs far below float32 round-off.
  """
  return jnp.promote_types(compute_dtype, jnp.float32)


def _dense(in_features, out_features, dtype, rngs):
  """A Dense layer computing in `dtype`, its parameters in wide_dtype(dtype)."""
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=_KERNEL_INIT,
    dtype=dtype,
    param_dtype=wide_dtype(dtype),
    rngs=rngs,
  )


class DenseBlock(nnx.Module):
  """Dense -> BatchNorm -> ReLU, the unit both autoencoders are built of."""

  def __init__(
    self, in_features, out_features, *, bn_momentum, bn_epsilon, dtype, rngs
  ):
    self.dense = _dense(in_features, out_features, dtype, rngs)
    # Two-pass variance, as Keras and PyTorch compute it: the fast
    # E[x^2] - E[x]^2 loses digits on activations of raw dB features. The
    # statistics stay in float32 when the matmuls are bfloat16.
    wide = wide_dtype(dtype)
    self.norm = nnx.BatchNorm(
      out_features,
      momentum=bn_momentum,
      epsilon=bn_epsilon,
      use_fast_variance=False,
      dtype=wide,
      param_dtype=wide,
      rngs=rngs,
    )
    # nnx.BatchNorm creates its running statistics in float32 whatever its
    # dtype; a float64 run must carry them in float64 from the start.
    self.norm.mean = nnx.BatchStat(self.norm.mean[...].astype(wide))
    self.norm.var = nnx.BatchStat(self.norm.var[...].astype(wide))

  def __call__(self, x, *, train):
    return nnx.relu(self.norm(self.dense(x), use_running_average=not train))


def _stack(widths, bn_momentum, bn_epsilon, dtype, rngs):
  return nnx.List(
    [
      DenseBlock(
        a,
        b,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        dtype=dtype,
        rngs=rngs,
      )
      for a, b in zip(widths[:-1], widths[1:])
    ]
  )


class Autoencoder(nnx.Module):
  """[Dense-BN-ReLU] x depth, a Dense-BN-ReLU bottleneck, the mirror, a Dense.

  With the defaults (640 in and out, width 128, depth 4, bottleneck 8) it is
  the DCASE 2020 baseline and AE-ASD model: 267,928 trainable parameters.
  """

  def __init__(
    self,
    in_features,
    out_features,
    *,
    hidden,
    depth,
    bottleneck,
    bn_momentum,
    bn_epsilon,
    dtype=jnp.float32,
    rngs,
  ):
    bn = dict(
      bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs
    )
    self.encoder = _stack([in_features] + [hidden] * depth + [bottleneck], **bn)
    self.decoder = _stack([bottleneck] + [hidden] * depth, **bn)
    # The output (and the VAE's heads) stay float32 (or float64): scores are
    # small differences of dB values, which bfloat16 would round away.
    self.output = _dense(hidden, out_features, wide_dtype(dtype), rngs)

  def __call__(self, x, *, train, key=None):
    """Returns the reconstruction and a zero per-vector KL term."""
    del key  # Deterministic; the argument keeps one signature for all models.
    for block in self.encoder:
      x = block(x, train=train)
    for block in self.decoder:
      x = block(x, train=train)
    return self.output(x), jnp.zeros(x.shape[:-1], x.dtype)


class VariationalAutoencoder(nnx.Module):
  """The encoder blocks, linear mean and log-variance heads, the AE decoder.

  Training samples z = mu + exp(logvar / 2) * eps; scoring decodes mu.
  """

  def __init__(
    self,
    in_features,
    out_features,
    *,
    hidden,
    depth,
    bottleneck,
    bn_momentum,
    bn_epsilon,
    dtype=jnp.float32,
    rngs,
  ):
    bn = dict(
      bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs
    )
    self.encoder = _stack([in_features] + [hidden] * depth, **bn)
    self.mean = _dense(hidden, bottleneck, wide_dtype(dtype), rngs)
    self.log_variance = _dense(hidden, bottleneck, wide_dtype(dtype), rngs)
    self.decoder = _stack([bottleneck] + [hidden] * depth, **bn)
    self.output = _dense(hidden, out_features, wide_dtype(dtype), rngs)

  def __call__(self, x, *, train, key=None):
    """Returns the reconstruction and the per-vector KL(q(z|x) || N(0, I))."""
    for block in self.encoder:
      x = block(x, train=train)
    mu, log_variance = self.mean(x), self.log_variance(x)
    z = mu
    if train:
      noise = jax.random.normal(key, mu.shape, mu.dtype)
      z = mu + jnp.exp(log_variance / 2) * noise
    for block in self.decoder:
      z = block(z, train=train)
    kl = -0.5 * jnp.sum(1 + log_variance - mu**2 - jnp.exp(log_variance), -1)
    return self.output(z), kl


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A config model name: which network, and whether it interpolates."""

  network: type
  # IDNN: predict the centre frame from the others instead of reconstructing.
  interpolate: bool


MODELS = {
  "AE": ModelSpec(Autoencoder, interpolate=False),
  "IDNN": ModelSpec(Autoencoder, interpolate=True),
  "VAE": ModelSpec(VariationalAutoencoder, interpolate=False),
  "VIDNN": ModelSpec(VariationalAutoencoder, interpolate=True),
}


def io_sizes(model_config):
  """(input, output) widths of the network for a config.model."""
  frames, n_mels = model_config.frames, model_config.n_mels
  if MODELS[model_config.name].interpolate:
    return (frames - 1) * n_mels, n_mels
  return frames * n_mels, frames * n_mels


def build(model_config, rngs):
  """The network named by config.model.name, sized by the config."""
  in_features, out_features = io_sizes(model_config)
  return MODELS[model_config.name].network(
    in_features,
    out_features,
    hidden=model_config.hidden,
    depth=model_config.depth,
    bottleneck=model_config.bottleneck,
    bn_momentum=model_config.bn_momentum,
    bn_epsilon=model_config.bn_epsilon,
    dtype=jnp.dtype(model_config.compute_dtype),
    rngs=rngs,
  )
