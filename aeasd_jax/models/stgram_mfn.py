"""STgram-MFN (Liu et al., ICASSP 2022) and its ArcFace head, in Flax NNX.

Transcribed from liuyoude/STgram-MFN (net.py): a learned Tgram beside the
log-mel, both stacked into a MobileFaceNet that gives a 128-d embedding.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from aeasd_jax.models import layers

from aeasd_jax.errors import AeasdError
from aeasd_jax.models.autoencoders import wide_dtype

# MobileFaceNet's bottleneck tables by name (the constructor's
# `bottlenecks`), rows of (expansion t, channels c, repeats n, stride s of the
# first repeat). "mobilefacenet" is the paper's, the published results' and
# the repository's until March 2023; "liu2022" is the repository's default
# since its last commit (d6c8865), after the DCASE 2022 Task 2 winner (Liu et
# al., technical report 8).
BOTTLENECKS = {
  "mobilefacenet": (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
  ),
  "liu2022": ((2, 128, 2, 2), (4, 128, 2, 2), (4, 128, 2, 2)),
}

# Fixed in the reference: the first conv's width and the width before the
# embedding.
_STEM_CHANNELS = 64
_WIDE_CHANNELS = 512
# PyTorch's BatchNorm2d and LayerNorm defaults. Flax's momentum weighs the
# running value where PyTorch's (0.1) weighs the new batch.
_BN_MOMENTUM = 0.9
_NORM_EPSILON = 1e-5
_TGRAM_LEAKY_SLOPE = 0.2
_TGRAM_LAYERS = 3
_PRELU_INIT = 0.25

# MobileFaceNet's own init: He normal over fan-out, kh * kw * out_channels.
_MFN_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Conv1d's default, U(+-1 / sqrt(fan_in)): the Tgram keeps it.
_TORCH_CONV_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _batch_norm(channels, dtype, rngs):
  """PyTorch's BatchNorm2d(channels), its parameters and statistics in dtype."""
  return layers.batch_norm(
    channels,
    momentum=_BN_MOMENTUM,
    epsilon=_NORM_EPSILON,
    dtype=dtype,
    rngs=rngs,
  )


class PReLU(nnx.Module):
  """torch.nn.PReLU(channels): a learned negative slope per channel."""

  def __init__(self, channels, *, param_dtype):
    self.weight = nnx.Param(jnp.full((channels,), _PRELU_INIT, param_dtype))

  def __call__(self, x):
    return jnp.where(x >= 0, x, self.weight[...].astype(x.dtype) * x)


class ConvBlock(nnx.Module):
  """Conv2d (no bias) -> BatchNorm -> PReLU, the PReLU dropped if `linear`.

  Channels-last, [batch, mels, frames, channels]: `kernel` is (mels, frames)
  as in PyTorch's (H, W).
  """

  def __init__(
    self,
    in_channels,
    out_channels,
    kernel,
    *,
    stride=1,
    padding=0,
    depthwise=False,
    linear=False,
    dtype,
    rngs,
  ):
    wide = wide_dtype(dtype)
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    self.conv = nnx.Conv(
      in_channels,
      out_channels,
      kernel,
      strides=stride,
      padding=((padding, padding),) * 2,
      feature_group_count=in_channels if depthwise else 1,
      use_bias=False,
      kernel_init=_MFN_CONV_INIT,
      dtype=dtype,
      param_dtype=wide,
      rngs=rngs,
    )
    self.norm = _batch_norm(out_channels, wide, rngs)
    self.prelu = None if linear else PReLU(out_channels, param_dtype=wide)
    self.depthwise = depthwise
    self.stride, self.padding = stride, padding

  def __call__(self, x, *, train):
    kernel = self.conv.kernel[...].astype(self.conv.dtype)
    x = x.astype(self.conv.dtype)
    if self.depthwise:
      x = depthwise_conv(x, kernel, self.stride, self.padding)
    elif kernel.shape[:2] == (1, 1) and self.stride == 1:
      # A pointwise conv is a GEMM over channels; XLA's CPU convolution
      # takes 3x (forward) to 4x (backward) as long (benchmarks/NOTES.md).
      # As a 2-D product: XLA's CPU backend runs the weight gradient of a
      # 4-D one 3x slower.
      x = (x.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(
        *x.shape[:-1], kernel.shape[-1]
      )
    else:
      x = self.conv(x)
    x = self.norm(x, use_running_average=not train)
    return x if self.prelu is None else self.prelu(x)


def depthwise_conv(x, kernel, stride, padding):
  """A depthwise Conv2d as a sum of shifted, per-channel scaled inputs.

  The same sums as lax.conv_general_dilated with feature_group_count equal
  to the channels, in another order: XLA's CPU backend runs grouped
  convolutions as generic loops, 20x (forward) to 25x (backward) slower
  than these elementwise products on 2 cores (benchmarks/NOTES.md).

  Args:
    x: [batch, height, width, channels].
    kernel: [kh, kw, 1, channels], nnx.Conv's layout.
    stride: the stride of both axes.
    padding: zeros added on each side of both axes.
  """
  kh, kw = kernel.shape[:2]
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  height = (x.shape[1] - kh) // stride + 1
  width = (x.shape[2] - kw) // stride + 1
  if height == width == 1 and (kh, kw) == x.shape[1:3]:
    # The kernel covers the whole map (MobileFaceNet's linear7): a sum.
    return jnp.einsum("bhwc,hwc->bc", x, kernel[:, :, 0])[:, None, None]
  out = 0
  for i in range(kh):
    for j in range(kw):
      tap = x[
        :,
        i : i + stride * (height - 1) + 1 : stride,
        j : j + stride * (width - 1) + 1 : stride,
      ]
      out = out + tap * kernel[i, j, 0]
  return out


class Bottleneck(nnx.Module):
  """1x1 expand, 3x3 depthwise (strided), 1x1 linear project; residual when
  the stride is 1 and the width unchanged."""

  def __init__(self, in_channels, out_channels, stride, expansion, **layer):
    hidden = in_channels * expansion
    self.residual = stride == 1 and in_channels == out_channels
    self.expand = ConvBlock(in_channels, hidden, 1, **layer)
    self.depthwise = ConvBlock(
      hidden, hidden, 3, stride=stride, padding=1, depthwise=True, **layer
    )
    self.project = ConvBlock(hidden, out_channels, 1, linear=True, **layer)

  def __call__(self, x, *, train):
    y = self.expand(x, train=train)
    y = self.project(self.depthwise(y, train=train), train=train)
    return x + y if self.residual else y


def _bottleneck_rows(bottlenecks):
  """(in, out, stride, expansion) of each Bottleneck, in order."""
  rows, width = [], _STEM_CHANNELS
  for expansion, channels, repeats, stride in bottlenecks:
    for i in range(repeats):
      rows.append((width, channels, stride if i == 0 else 1, expansion))
      width = channels
  return rows


def _pooled_size(size, bottlenecks):
  """The mels (or frames) left before the linear depthwise conv.

  Every stride-s 3x3 conv with padding 1 maps n to (n - 1) // s + 1: 128 x 313
  becomes 8 x 20 at the reference's 10-s setting.
  """
  for stride in [2] + [row[2] for row in _bottleneck_rows(bottlenecks)]:
    size = (size - 1) // stride + 1
  return size


class MobileFaceNet(nnx.Module):
  """The reference's MobileFaceNet on [batch, mels, frames, 2] maps."""

  def __init__(self, n_mels, frames, bottlenecks, embedding, *, dtype, rngs):
    if bottlenecks not in BOTTLENECKS:
      raise AeasdError(
        f"STgram-MFN: bottlenecks={bottlenecks!r}: expected one of"
        f" {sorted(BOTTLENECKS)}"
      )
    bottlenecks = BOTTLENECKS[bottlenecks]
    layer = dict(dtype=dtype, rngs=rngs)
    self.conv1 = ConvBlock(2, _STEM_CHANNELS, 3, stride=2, padding=1, **layer)
    self.dw_conv1 = ConvBlock(
      _STEM_CHANNELS, _STEM_CHANNELS, 3, padding=1, depthwise=True, **layer
    )
    self.blocks = nnx.List(
      [Bottleneck(*row, **layer) for row in _bottleneck_rows(bottlenecks)]
    )
    self.conv2 = ConvBlock(bottlenecks[-1][1], _WIDE_CHANNELS, 1, **layer)
    # The reference hard-codes (8, 20), right for 128 mels x 313 frames only.
    pooled = (
      _pooled_size(n_mels, bottlenecks),
      _pooled_size(frames, bottlenecks),
    )
    self.linear7 = ConvBlock(
      _WIDE_CHANNELS,
      _WIDE_CHANNELS,
      pooled,
      depthwise=True,
      linear=True,
      **layer,
    )
    self.linear1 = ConvBlock(_WIDE_CHANNELS, embedding, 1, linear=True, **layer)

  def __call__(self, x, *, train):
    x = self.dw_conv1(self.conv1(x, train=train), train=train)
    for block in self.blocks:
      x = block(x, train=train)
    x = self.conv2(x, train=train)
    x = self.linear1(self.linear7(x, train=train), train=train)
    return x.reshape(x.shape[0], -1)


class TgramBlock(nnx.Module):
  """LayerNorm over the frames axis, LeakyReLU(0.2), Conv1d(3, padding 1)."""

  def __init__(self, n_mels, frames, *, dtype, rngs):
    wide = wide_dtype(dtype)
    # PyTorch's LayerNorm(frames) on [batch, mels, frames]: one scale and
    # bias per frame, statistics over the frames of each mel channel.
    self.norm = nnx.LayerNorm(
      frames,
      epsilon=_NORM_EPSILON,
      reduction_axes=-2,
      feature_axes=-2,
      use_fast_variance=False,
      dtype=wide,
      param_dtype=wide,
      rngs=rngs,
    )
    self.conv = nnx.Conv(
      n_mels,
      n_mels,
      3,
      padding=((1, 1),),
      use_bias=False,
      kernel_init=_TORCH_CONV_INIT,
      dtype=dtype,
      param_dtype=wide,
      rngs=rngs,
    )

  def __call__(self, x):
    return self.conv(nnx.leaky_relu(self.norm(x), _TGRAM_LEAKY_SLOPE))


class TgramNet(nnx.Module):
  """A strided Conv1d on the waveform, frame-aligned with the log-mel, then
  three TgramBlocks; channels-last, [batch, frames, mels]."""

  def __init__(self, n_mels, frames, win_length, hop_length, *, dtype, rngs):
    # padding = win_length // 2 is the STFT's centring, so the frames match.
    self.win_length = win_length
    self.hop_length = hop_length
    self.frames = frames
    self.extractor = nnx.Conv(
      1,
      n_mels,
      win_length,
      strides=hop_length,
      padding=((win_length // 2, win_length // 2),),
      use_bias=False,
      kernel_init=_TORCH_CONV_INIT,
      dtype=dtype,
      param_dtype=wide_dtype(dtype),
      rngs=rngs,
    )
    self.blocks = nnx.List(
      [
        TgramBlock(n_mels, frames, dtype=dtype, rngs=rngs)
        for _ in range(_TGRAM_LAYERS)
      ]
    )

  def __call__(self, wave):
    samples = wave.shape[-1]
    pad = self.win_length // 2
    frames = (samples + 2 * pad - self.win_length) // self.hop_length + 1
    if frames != self.frames:
      raise AeasdError(
        f"STgram-MFN: a waveform of {samples} samples gives {frames} frames"
        f" at win_length={self.win_length}, hop_length={self.hop_length};"
        f" expected frames={self.frames}"
      )
    x = self.extractor(wave[..., None])
    for block in self.blocks:
      x = block(x)
    return x


def _normalize(x):
  """F.normalize: x / max(||x||, 1e-12) along the last axis."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ArcMarginProduct(nnx.Module):
  """ArcFace: s * cos(theta + m) for the label's class, s * cos(theta) else.

  Past theta = pi - m, where cos(theta + m) turns back up, the label's logit
  is s * (cos(theta) - m * sin(m)) instead (the reference's th / mm; its
  easy_margin is off). The reference scores with the label too, so test
  logits carry the margin as training's do.
  """

  def __init__(self, in_features, num_classes, *, s, m, dtype, rngs):
    wide = wide_dtype(dtype)
    # Xavier uniform, as the reference, on its [num_classes, in] layout.
    self.weight = nnx.Param(
      nnx.initializers.glorot_uniform()(
        rngs.params(), (num_classes, in_features), wide
      )
    )
    self.s, self.cos_m, self.sin_m = s, math.cos(m), math.sin(m)
    self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

  def __call__(self, x, label):
    weight = self.weight[...]
    cosine = _normalize(x.astype(weight.dtype)) @ _normalize(weight).T
    # Clipped: rounding can push cos^2 just past 1 (the reference gets NaN).
    sine = jnp.sqrt(jnp.clip(1 - cosine**2, 0, 1))
    phi = cosine * self.cos_m - sine * self.sin_m
    phi = jnp.where(cosine > self.th, phi, cosine - self.mm)
    own = jax.nn.one_hot(label, cosine.shape[-1], dtype=jnp.bool_)
    return self.s * jnp.where(own, phi, cosine)


class STgramMFN(nnx.Module):
  """The log-mel and the Tgram, stacked, into MobileFaceNet; ArcFace logits.

  Inputs are the waveform [batch, samples] and its log-mel [batch, frames,
  n_mels], whose frame count the Tgram's strided conv reproduces (313 for 10
  s at 16 kHz, hop 512). Inside, maps are channels-last: [batch, n_mels,
  frames, 2], channel 0 the log-mel and 1 the Tgram, as the reference's
  NCHW (batch, 2, 128, 313). The reference's fc_out (Linear(128,
  num_classes)) is left out: with ArcFace on, its output is discarded.

  Args:
    num_classes: ArcFace's classes (41 machine ids for DCASE 2020).
    n_mels: Mel bins of the log-mel, and the Tgram's channels.
    frames: Frames of the log-mel, and the Tgram LayerNorm's width.
    win_length: The Tgram conv's kernel, the STFT's window.
    hop_length: The Tgram conv's stride, the STFT's hop.
    bottlenecks: A table of BOTTLENECKS, by name.
    embedding: The embedding's width.
    arcface_s: ArcFace's scale (the reference trains with 30).
    arcface_m: ArcFace's angular margin (the reference trains with 0.7).
    dtype: The convolutions' compute dtype; parameters, norms and ArcFace
      are in wide_dtype(dtype).
    rngs: The initialisers' keys.
  """

  def __init__(
    self,
    num_classes,
    *,
    n_mels=128,
    frames=313,
    win_length=1024,
    hop_length=512,
    bottlenecks="mobilefacenet",
    embedding=128,
    arcface_s=30.0,
    arcface_m=0.7,
    dtype=jnp.float32,
    rngs,
  ):
    layer = dict(dtype=dtype, rngs=rngs)
    self.tgram = TgramNet(n_mels, frames, win_length, hop_length, **layer)
    self.mobilefacenet = MobileFaceNet(
      n_mels, frames, bottlenecks, embedding, **layer
    )
    self.arcface = ArcMarginProduct(
      embedding, num_classes, s=arcface_s, m=arcface_m, **layer
    )

  def embed(self, wave, log_mel, *, train):
    """The embedding [batch, embedding] of waveforms and their log-mels."""
    tgram = self.tgram(wave)
    maps = jnp.stack([log_mel.astype(tgram.dtype), tgram], axis=-1)
    return self.mobilefacenet(maps.swapaxes(1, 2), train=train)

  def __call__(self, wave, log_mel, label, *, train):
    """(ArcFace logits [batch, num_classes], embedding), the margin at label."""
    embedding = self.embed(wave, log_mel, train=train)
    return self.arcface(embedding, label), embedding
