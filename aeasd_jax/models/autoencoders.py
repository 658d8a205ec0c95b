"""The detectors in Flax NNX: the DCASE baseline autoencoder, VAEs, IDNN.

IDNN and VIDNN are the same networks fed the context frames and asked for the
centre frame; the registries at the bottom map config names to the networks.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from aeasd_jax.models import layers


def _torch_uniform(fan_in):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch.nn.Linear's kernel and bias.

  PyTorch's kaiming_uniform_(a=sqrt(5)) has gain sqrt(2 / (1 + 5)) and bound
  gain * sqrt(3 / fan_in), which is this; its bias takes the same bound.
  """
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# (kernel, bias) initialisers for a Dense layer of fan_in inputs, by
# config.model.init. "keras": Keras' Dense default, as the DCASE baseline
# trained; "torch": torch.nn.Linear's, as AE-ASD trained.
INITS = {
  "keras": lambda fan_in: (
    nnx.initializers.glorot_uniform(),
    nnx.initializers.zeros_init(),
  ),
  "torch": lambda fan_in: (_torch_uniform(fan_in), _torch_uniform(fan_in)),
}


def wide_dtype(compute_dtype):
  """The dtype of parameters, BatchNorm statistics, the output and the loss.

  float32 for float32 and bfloat16 compute; float64 computes all in float64,
  so that equivalence tests can compare runs far below float32 round-off.
  """
  return jnp.promote_types(compute_dtype, jnp.float32)


def _dense(in_features, out_features, dtype, rngs, init):
  """A Dense layer computing in `dtype`, its parameters in wide_dtype(dtype)."""
  kernel_init, bias_init = INITS[init](in_features)
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=kernel_init,
    bias_init=bias_init,
    dtype=dtype,
    param_dtype=wide_dtype(dtype),
    rngs=rngs,
  )


class DenseBlock(nnx.Module):
  """Dense -> BatchNorm -> ReLU, the unit both autoencoders are built of."""

  def __init__(
    self,
    in_features,
    out_features,
    *,
    bn_momentum,
    bn_epsilon,
    dtype,
    rngs,
    init="keras",
  ):
    self.dense = _dense(in_features, out_features, dtype, rngs, init)
    # The statistics stay in float32 when the matmuls are bfloat16.
    self.norm = layers.batch_norm(
      out_features,
      momentum=bn_momentum,
      epsilon=bn_epsilon,
      dtype=wide_dtype(dtype),
      rngs=rngs,
    )

  def __call__(self, x, *, train):
    return nnx.relu(self.norm(self.dense(x), use_running_average=not train))


def _stack(widths, **layer):
  return nnx.List(
    [DenseBlock(a, b, **layer) for a, b in zip(widths[:-1], widths[1:])]
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
    init="keras",
    rngs,
  ):
    layer = dict(
      bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon,
      dtype=dtype,
      rngs=rngs,
      init=init,
    )
    self.encoder = _stack(
      [in_features] + [hidden] * depth + [bottleneck], **layer
    )
    self.decoder = _stack([bottleneck] + [hidden] * depth, **layer)
    # The output (and the VAE's heads) stay float32 (or float64): scores are
    # small differences of dB values, which bfloat16 would round away.
    self.output = _dense(hidden, out_features, wide_dtype(dtype), rngs, init)

  def __call__(self, x, *, train, key=None):
    """Returns the reconstruction and a zero per-vector KL term."""
    del key  # Deterministic; the argument keeps one signature for all models.
    for block in self.encoder:
      x = block(x, train=train)
    for block in self.decoder:
      x = block(x, train=train)
    return self.output(x), jnp.zeros(x.shape[:-1], x.dtype)


def _kl(mu, log_variance):
  """Per-vector KL(N(mu, exp(log_variance)) || N(0, I)), summed over z."""
  return -0.5 * jnp.sum(1 + log_variance - mu**2 - jnp.exp(log_variance), -1)


class VariationalAutoencoder(nnx.Module):
  """The encoder blocks, linear mean and log-variance heads, the AE decoder.

  Training samples z = mu + exp(logvar / 2) * eps; scoring decodes mu.
  config.model.vae="reparameterised".
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
    init="keras",
    rngs,
  ):
    layer = dict(
      bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon,
      dtype=dtype,
      rngs=rngs,
      init=init,
    )
    wide = wide_dtype(dtype)
    self.encoder = _stack([in_features] + [hidden] * depth, **layer)
    self.mean = _dense(hidden, bottleneck, wide, rngs, init)
    self.log_variance = _dense(hidden, bottleneck, wide, rngs, init)
    self.decoder = _stack([bottleneck] + [hidden] * depth, **layer)
    self.output = _dense(hidden, out_features, wide, rngs, init)

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
    return self.output(z), _kl(mu, log_variance)


class AeasdVariationalAutoencoder(nnx.Module):
  """AE-ASD's VAE: the encoder blocks, then three Dense-BN-ReLU heads.

  The heads give mu, logvar and z; the decoder reads z * exp(logvar / 2) + mu,
  with z a learned head in place of sampled noise, so training and scoring
  compute the same deterministic formula (BatchNorm apart). With the defaults
  it has 270,024 trainable parameters. config.model.vae="aeasd".
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
    init="keras",
    rngs,
  ):
    layer = dict(
      bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon,
      dtype=dtype,
      rngs=rngs,
      init=init,
    )
    self.encoder = _stack([in_features] + [hidden] * depth, **layer)
    self.mean = DenseBlock(hidden, bottleneck, **layer)
    self.log_variance = DenseBlock(hidden, bottleneck, **layer)
    self.z = DenseBlock(hidden, bottleneck, **layer)
    self.decoder = _stack([bottleneck] + [hidden] * depth, **layer)
    self.output = _dense(hidden, out_features, wide_dtype(dtype), rngs, init)

  def __call__(self, x, *, train, key=None):
    """Returns the reconstruction and the per-vector KL term."""
    del key  # Deterministic, in training too.
    for block in self.encoder:
      x = block(x, train=train)
    mu = self.mean(x, train=train)
    log_variance = self.log_variance(x, train=train)
    z = self.z(x, train=train) * jnp.exp(log_variance / 2) + mu
    for block in self.decoder:
      z = block(z, train=train)
    return self.output(z), _kl(mu, log_variance)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A config model name: which kind of network, and whether it interpolates."""

  # Whether config.model.vae picks the network from VAES.
  variational: bool
  # IDNN: predict the centre frame from the others instead of reconstructing.
  interpolate: bool


MODELS = {
  "AE": ModelSpec(variational=False, interpolate=False),
  "IDNN": ModelSpec(variational=False, interpolate=True),
  "VAE": ModelSpec(variational=True, interpolate=False),
  "VIDNN": ModelSpec(variational=True, interpolate=True),
}

# config.model.vae: the network of VAE and VIDNN.
VAES = {
  "reparameterised": VariationalAutoencoder,
  "aeasd": AeasdVariationalAutoencoder,
}


def network(model_config):
  """The nnx.Module class config.model names."""
  if MODELS[model_config.name].variational:
    return VAES[model_config.vae]
  return Autoencoder


def io_sizes(model_config):
  """(input, output) widths of the network for a config.model."""
  frames, n_mels = model_config.frames, model_config.n_mels
  if MODELS[model_config.name].interpolate:
    return (frames - 1) * n_mels, n_mels
  return frames * n_mels, frames * n_mels


def build(model_config, rngs):
  """The network named by config.model.name, sized by the config."""
  in_features, out_features = io_sizes(model_config)
  return network(model_config)(
    in_features,
    out_features,
    hidden=model_config.hidden,
    depth=model_config.depth,
    bottleneck=model_config.bottleneck,
    bn_momentum=model_config.bn_momentum,
    bn_epsilon=model_config.bn_epsilon,
    dtype=jnp.dtype(model_config.compute_dtype),
    init=model_config.init,
    rngs=rngs,
  )
