"""Layers the networks share."""

from flax import nnx


def batch_norm(features, *, momentum, epsilon, dtype, rngs):
  """nnx.BatchNorm with two-pass variance and statistics kept in `dtype`.

  Two-pass, as Keras and PyTorch compute it: the fast E[x^2] - E[x]^2 loses
  digits on activations of raw dB features. nnx.BatchNorm creates its
  running statistics in float32 whatever its dtype; a float64 run must
  carry them in float64 from the start.
  """
  norm = nnx.BatchNorm(
    features,
    momentum=momentum,
    epsilon=epsilon,
    use_fast_variance=False,
    dtype=dtype,
    param_dtype=dtype,
    rngs=rngs,
  )
  norm.mean = nnx.BatchStat(norm.mean[...].astype(dtype))
  norm.var = nnx.BatchStat(norm.var[...].astype(dtype))
  return norm
