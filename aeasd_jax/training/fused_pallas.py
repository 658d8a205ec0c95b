"""Dense -> BatchNorm -> ReLU as two Pallas kernels (stage M2, FUSED_STEP.md).

A program owns every batch row of a block of one model's features, so it
computes their batch statistics itself: one forward kernel (GEMM, two-pass
statistics, normalise, ReLU) and one backward kernel (ReLU mask, the two
per-feature sums, dz, the weight gradient of its columns); the input's
gradient is one XLA GEMM. Under the step's vmap over models, Pallas adds the
model axis to the grid: a layer is one launch per direction for all models.

Backends (read in the JAX 0.10.2, 0.11.2 and 0.12.0.1 sources):
- Interpret mode (config.train.pallas_interpret): pl.pallas_call's HLO
  interpreter runs the kernels as plain XLA loops on any backend, the only
  way Pallas runs on a CPU. tests/test_fused.py runs them so; it checks
  semantics and says nothing of speed.
- GPU: the kernels take jnp.dot of ref slices, which only the Triton backend
  lowers: Mosaic GPU, pl.pallas_call's default on GPU
  (jax_pallas_use_mosaic_gpu=True), has no dot_general rule; its matmuls are
  plgpu.wgmma on shared-memory refs (M a multiple of 64; TF32 takes no
  transposed operand). So the kernels pass pltriton.CompilerParams and lower
  to a __gpu$xla.gpu.triton custom call holding Triton IR; float32 dots lower
  as TF32 (jnp.dot's default precision, as XLA's GEMMs on GPU), bfloat16
  ones accumulate in float32. On JAX 0.10 that lowering needs no GPU, and the
  tests check it verifies at the AE's shapes. Untested without a GPU:
  Triton's compile to PTX (shared memory, register pressure), the kernels'
  results on a device, their speed. The Triton backend warns of its
  deprecation at every lowering from JAX 0.11.0 and is to be removed, hence
  JAX_RANGE; what lasts is a Mosaic GPU rewrite (Mosaic GPU kernels also run
  on a CPU, in its GPU interpreter: the private InterpretGPUParams of
  jax._src.pallas.mosaic_gpu.interpret in 0.10.2).
Triton wants power-of-two tiles and dot dimensions of at least 16: rows come
in ROW_TILE tiles (the batch a multiple of 16), and narrow layers are
zero-padded to whole blocks, in interpret mode too, so that the tests run
what a GPU would.
"""

import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from aeasd_jax.errors import AeasdError

# Tiles: rows per GEMM tile, features per program, inputs per GEMM step.
# Powers of two; every dot dimension is at least MIN_DOT (Triton's minimum).
# Not tuned: an x tile of ROW_TILE x INPUT_TILE float32 is 32 KB of shared
# memory per pipeline stage (Triton's default is 3 stages).
ROW_TILE = 128
FEATURE_BLOCK = 16
INPUT_TILE = 64
MIN_DOT = 16
NUM_WARPS = 4
# JAX versions whose Pallas Triton backend the kernels are written for:
# lowered (never run) on 0.10.2; the same API, deprecated and warning, in
# the 0.11.2 and 0.12.0.1 sources; removal is announced.
JAX_RANGE = ((0, 10, 2), (0, 13))


class Tiles(NamedTuple):
  """One layer's tiling; `padded_*` are the sizes the kernels see."""

  rows: int
  inputs: int
  padded_inputs: int
  padded_features: int


def _pow2_divisor(n, cap):
  """The largest power of two that divides n and is at most cap."""
  return min(n & -n, 1 << (cap.bit_length() - 1))


def _round_up(n, multiple):
  return -(-n // multiple) * multiple


def _require_batch(batch):
  if batch % MIN_DOT:
    raise AeasdError(
      f"config.train.batch_size={batch}: expected a multiple of {MIN_DOT}"
      " for config.train.kernels='pallas'"
    )


def tiles(batch, inputs, features):
  """The tiling of a [batch, inputs] @ [inputs, features] layer."""
  _require_batch(batch)
  rows = _pow2_divisor(batch, ROW_TILE)
  padded_inputs = _round_up(inputs, MIN_DOT)
  return Tiles(
    rows=rows,
    inputs=_pow2_divisor(padded_inputs, INPUT_TILE),
    padded_inputs=padded_inputs,
    padded_features=_round_up(features, FEATURE_BLOCK),
  )


def _version(text):
  return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def resolve(config):
  """What config.train.kernels="pallas" runs: "pallas" or "pallas_interpret".

  Raises AeasdError where the kernels cannot run: a batch the tiles do not
  divide, or (unless config.train.pallas_interpret asks for interpret mode)
  a JAX outside JAX_RANGE or no GPU.
  """
  _require_batch(config.train.batch_size)
  if config.train.pallas_interpret:
    return "pallas_interpret"
  low, high = JAX_RANGE
  if not low <= _version(jax.__version__) < high:
    raise AeasdError(
      "config.train.kernels='pallas' uses Pallas' Triton backend, written"
      f" for jax >= {'.'.join(map(str, low))}, <"
      f" {'.'.join(map(str, high))}; this is jax {jax.__version__}: use"
      " 'xla' or 'jax_fused'"
    )
  backend = jax.default_backend()
  if backend != "gpu":
    raise AeasdError(
      "config.train.kernels='pallas' compiles Pallas kernels for an NVIDIA"
      f" GPU (the Triton backend); this process runs on {backend!r}: use"
      " 'xla' or 'auto', or config.train.pallas_interpret=True for Pallas'"
      " interpret mode (slow; for tests)"
    )
  return "pallas"


# The numerics every kernel shares, one place each (the mutation tests in
# tests/test_fused.py replace them to show that the comparison catches a
# wrong kernel).
def _feature_sums(t):
  """[rows, features] -> [1, features]: sums over a tile's batch rows."""
  return jnp.sum(t, axis=0, keepdims=True)


def _variance(centred_square_sum, n):
  """The biased variance, which nnx.BatchNorm normalises with and stores."""
  return centred_square_sum / n


def _relu_mask(y, g):
  """ReLU's cotangent: g where the activation passed, else 0."""
  return jnp.where(y > 0, g, 0)


def _row_slice(r, t):
  return pl.ds(pl.multiple_of(r * t.rows, t.rows), t.rows)


def _input_slice(k, t):
  return pl.ds(pl.multiple_of(k * t.inputs, t.inputs), t.inputs)


def _forward_kernel(
  x_ref,
  w_ref,
  b_ref,
  scale_ref,
  offset_ref,
  y_ref,
  z_ref,
  mean_ref,
  var_ref,
  *,
  t,
  epsilon,
  dtype,
  barrier,
):
  """One program: all rows, one block of features; two-pass statistics.

  Pass 1 writes z = x @ w + b and sums it; pass 2 sums (z - mean)**2 (the
  two-pass variance of nnx.BatchNorm(use_fast_variance=False)); pass 3
  normalises. z is the backward's residual, so re-reading it costs no
  extra buffer.
  """
  batch = x_ref.shape[0]
  wide = z_ref.dtype
  zeros = jnp.zeros((1, w_ref.shape[1]), wide)
  num_rows = batch // t.rows

  def pre_activation(r):
    def step(k, acc):
      cols = _input_slice(k, t)
      return acc + jnp.dot(
        x_ref[_row_slice(r, t), cols],
        w_ref[cols, :],
        preferred_element_type=wide,
      )

    acc = jax.lax.fori_loop(
      0,
      t.padded_inputs // t.inputs,
      step,
      jnp.zeros((t.rows, w_ref.shape[1]), wide),
    )
    return (acc.astype(dtype) + b_ref[...]).astype(wide)

  def sum_z(r, s1):
    z = pre_activation(r)
    z_ref[_row_slice(r, t), :] = z
    return s1 + _feature_sums(z)

  mean = jax.lax.fori_loop(0, num_rows, sum_z, zeros) / batch
  if barrier:  # Pass 2 reads z that other threads of the program wrote.
    pltriton.debug_barrier()

  def sum_squares(r, s2):
    d = z_ref[_row_slice(r, t), :] - mean
    return s2 + _feature_sums(d * d)

  var = _variance(jax.lax.fori_loop(0, num_rows, sum_squares, zeros), batch)
  rstd = jax.lax.rsqrt(var + epsilon)
  scale, offset = scale_ref[...], offset_ref[...]

  def normalise(r, carry):
    rows = _row_slice(r, t)
    x_hat = (z_ref[rows, :] - mean) * rstd
    y_ref[rows, :] = jnp.maximum(x_hat * scale + offset, 0)
    return carry

  jax.lax.fori_loop(0, num_rows, normalise, 0)
  mean_ref[...] = mean
  var_ref[...] = var


def _backward_kernel(
  x_ref,
  z_ref,
  y_ref,
  g_ref,
  mean_ref,
  var_ref,
  scale_ref,
  dz_ref,
  dw_ref,
  db_ref,
  dscale_ref,
  doffset_ref,
  *,
  t,
  epsilon,
  dtype,
  barrier,
):
  """One program: the block's parameter gradients and dz, in three passes.

  With a = x_hat * scale + offset and y = relu(a): g_a = g_y where y > 0;
  d offset = sum(g_a), d scale = sum(g_a * x_hat) (pass 1); dz = scale *
  rstd / n * (n * g_a - d offset - x_hat * d scale) and d bias = sum(dz)
  (pass 2); d kernel = x.T @ dz for the block's columns (pass 3).
  """
  batch = x_ref.shape[0]
  wide = z_ref.dtype
  features = z_ref.shape[1]
  zeros = jnp.zeros((1, features), wide)
  num_rows = batch // t.rows
  mean = mean_ref[...]
  rstd = jax.lax.rsqrt(var_ref[...] + epsilon)

  def terms(r):
    rows = _row_slice(r, t)
    x_hat = (z_ref[rows, :] - mean) * rstd
    return x_hat, _relu_mask(y_ref[rows, :], g_ref[rows, :])

  def sum_cotangents(r, sums):
    x_hat, g_a = terms(r)
    return sums[0] + _feature_sums(g_a), sums[1] + _feature_sums(g_a * x_hat)

  d_offset, d_scale = jax.lax.fori_loop(
    0, num_rows, sum_cotangents, (zeros, zeros)
  )
  coefficient = scale_ref[...] * rstd / batch

  def write_dz(r, d_bias):
    x_hat, g_a = terms(r)
    dz = coefficient * (batch * g_a - d_offset - x_hat * d_scale)
    dz = dz.astype(dtype)
    dz_ref[_row_slice(r, t), :] = dz
    return d_bias + _feature_sums(dz.astype(wide))

  d_bias = jax.lax.fori_loop(0, num_rows, write_dz, zeros)
  if barrier:  # Pass 3 reads dz that other threads of the program wrote.
    pltriton.debug_barrier()

  def weight_columns(k, carry):
    cols = _input_slice(k, t)

    def add_rows(r, acc):
      rows = _row_slice(r, t)
      return acc + jax.lax.dot_general(
        x_ref[rows, cols],
        dz_ref[rows, :],
        (((0,), (0,)), ((), ())),
        preferred_element_type=wide,
      )

    acc = jax.lax.fori_loop(
      0, num_rows, add_rows, jnp.zeros((t.inputs, features), wide)
    )
    dw_ref[cols, :] = acc.astype(dw_ref.dtype)
    return carry

  jax.lax.fori_loop(0, t.padded_inputs // t.inputs, weight_columns, 0)
  db_ref[...] = d_bias.astype(db_ref.dtype)
  dscale_ref[...] = d_scale
  doffset_ref[...] = d_offset


def _specs(t, batch, *kinds):
  """BlockSpecs over the grid (feature block,), by operand kind."""
  fb = FEATURE_BLOCK
  by_kind = {
    "inputs": pl.BlockSpec((batch, t.padded_inputs), lambda j: (0, 0)),
    "weights": pl.BlockSpec((t.padded_inputs, fb), lambda j: (0, j)),
    "rows": pl.BlockSpec((batch, fb), lambda j: (0, j)),
    "vector": pl.BlockSpec((1, fb), lambda j: (0, j)),
  }
  return [by_kind[kind] for kind in kinds]


def _call(kernel, t, batch, in_kinds, out_kinds, out_shape, interpret, name):
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=(t.padded_features // FEATURE_BLOCK,),
    in_specs=_specs(t, batch, *in_kinds),
    out_specs=_specs(t, batch, *out_kinds),
    interpret=interpret,
    compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS),
    name=name,
  )


def _pad(a, rows, cols):
  """`a` zero-padded at the end to [rows, cols]; `a` itself if it fits."""
  if a.shape == (rows, cols):
    return a
  return jnp.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))


def _forward(epsilon, dtype, interpret, x, kernel, bias, scale, offset):
  batch, inputs = x.shape
  features = kernel.shape[1]
  t = tiles(batch, inputs, features)
  wide = scale.dtype
  fp = t.padded_features

  def vector(v):
    return _pad(v.reshape(1, -1), 1, fp)

  # Zero padding: padded inputs add nothing; padded features have z = 0,
  # scale = offset = 0, so y = 0 there and their gradients are 0.
  x_c = _pad(x.astype(dtype), batch, t.padded_inputs)
  w_c = _pad(kernel.astype(dtype), t.padded_inputs, fp)
  scale_p = vector(scale)
  rows = jax.ShapeDtypeStruct((batch, fp), wide)
  vec = jax.ShapeDtypeStruct((1, fp), wide)
  y, z, mean, var = _call(
    functools.partial(
      _forward_kernel,
      t=t,
      epsilon=epsilon,
      dtype=dtype,
      barrier=not interpret,
    ),
    t,
    batch,
    ("inputs", "weights", "vector", "vector", "vector"),
    ("rows", "rows", "vector", "vector"),
    (rows, rows, vec, vec),
    interpret,
    "dense_bn_relu_forward",
  )(x_c, w_c, vector(bias.astype(dtype)), scale_p, vector(offset))
  out = (y[:, :features], mean[0, :features], var[0, :features])
  return out, (x, x_c, kernel, w_c, z, y, mean, var, scale_p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def dense_bn_relu(epsilon, dtype, interpret, x, kernel, bias, scale, offset):
  """fused.dense_bn_relu (the same arguments and results) in Pallas kernels.

  Args:
    epsilon, dtype: as fused.dense_bn_relu.
    interpret: run the kernels in Pallas' interpret mode.
    x, kernel, bias, scale, offset: as fused.dense_bn_relu.
  """
  return _forward(epsilon, dtype, interpret, x, kernel, bias, scale, offset)[0]


def _backward(epsilon, dtype, interpret, residuals, cotangents):
  x, x_c, kernel, w_c, z, y, mean, var, scale_p = residuals
  batch, inputs = x.shape
  features = kernel.shape[1]
  t = tiles(batch, inputs, features)
  fp = t.padded_features
  g = _pad(cotangents[0], batch, fp)  # The statistics feed no gradient.
  vec = jax.ShapeDtypeStruct((1, fp), kernel.dtype)
  dz, dw, db, dscale, doffset = _call(
    functools.partial(
      _backward_kernel,
      t=t,
      epsilon=epsilon,
      dtype=dtype,
      barrier=not interpret,
    ),
    t,
    batch,
    ("inputs", "rows", "rows", "rows", "vector", "vector", "vector"),
    ("rows", "weights", "vector", "vector", "vector"),
    (
      jax.ShapeDtypeStruct((batch, fp), dtype),
      jax.ShapeDtypeStruct((t.padded_inputs, fp), kernel.dtype),
      vec,
      vec,
      vec,
    ),
    interpret,
    "dense_bn_relu_backward",
  )(x_c, z, y, g, mean, var, scale_p)
  # All feature blocks meet in the input's gradient: one GEMM.
  d_x = (dz @ w_c.T)[:, :inputs].astype(x.dtype)
  return (
    d_x,
    dw[:inputs, :features],
    db[0, :features],
    dscale[0, :features],
    doffset[0, :features],
  )


dense_bn_relu.defvjp(_forward, _backward)
