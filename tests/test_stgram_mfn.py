"""STgram-MFN: shapes, the reference's parameter count, ArcFace, PyTorch parity.

The reference is liuyoude/STgram-MFN, net.py (commit d6c8865, March 2023,
and the paper's bottleneck table it replaced). The PyTorch module here is
transcribed from it, with the same computation under the NNX module's names.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aeasd_jax.errors import AeasdError
from aeasd_jax.models import stgram_mfn
from benchmarks import peer_torch_stgram

# A tiny setting: 16 mels, 17 frames of hop 32 (512 samples), 3 classes.
# Its maps shrink 16 x 17 -> 8 x 9 -> 4 x 5 -> 2 x 3 -> 1 x 2 through the
# four stride-2 convs, so the final depthwise kernel is 1 x 2; mels and
# frames differ at every stage, so a swapped axis fails on a shape.
TINY = dict(n_mels=16, frames=17, win_length=64, hop_length=32)
TINY_POOLED = (1, 2)
TINY_SAMPLES = 16 * 32
CLASSES = 3
BATCH = 4

# The reference's tables, (t, c, n, s): the paper's MobileFaceNet (commented
# out in net.py since d6c8865) and net.py's current one.
PAPER_TABLE = peer_torch_stgram.PAPER_TABLE
NET_PY_TABLE = ((2, 128, 2, 2), (4, 128, 2, 2), (4, 128, 2, 2))
# DCASE 2020: every machine id of the dev and eval sets.
DCASE2020_CLASSES = 41


def _count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _inputs(dtype=jnp.float32):
  wave = jax.random.normal(jax.random.key(1), (BATCH, TINY_SAMPLES), dtype)
  log_mel = jax.random.normal(
    jax.random.key(2), (BATCH, TINY["frames"], TINY["n_mels"]), dtype
  )
  return wave, log_mel, jnp.array([0, 2, 1, 2])


@pytest.fixture(scope="module")
def tiny_model():
  return stgram_mfn.STgramMFN(CLASSES, **TINY, rngs=nnx.Rngs(0))


def test_shapes_in_train_and_eval(tiny_model):
  graphdef, state = nnx.split(tiny_model)

  @jax.jit  # One compile for both modes.
  def forward(state, wave, log_mel, label):
    model = nnx.merge(graphdef, state)
    return [model(wave, log_mel, label, train=t) for t in (True, False)]

  for logits, embedding in forward(state, *_inputs()):
    chex.assert_shape(logits, (BATCH, CLASSES))
    chex.assert_shape(embedding, (BATCH, 128))
    chex.assert_tree_all_finite((logits, embedding))


def test_waveform_of_the_wrong_length_is_refused(tiny_model):
  wave, log_mel, label = _inputs()
  with pytest.raises(AeasdError, match=r"544 samples gives 18 frames.*=17"):
    tiny_model(jnp.pad(wave, [(0, 0), (0, 32)]), log_mel, label, train=False)


def _conv_block(inp, oup, kernel, dw=False, linear=False):
  """Parameter counts of the reference's ConvBlock: conv, BN, PReLU."""
  counts = [(1 if dw else inp) * oup * math.prod(kernel), 2 * oup]
  return counts if linear else counts + [oup]


def _reference_parameter_count(table, num_classes):
  """net.py's STgramMFN(use_arcface=True) at its 10-s sizes, layer by layer.

  Its literals: Conv1d(1, 128, 1024) and three [LayerNorm(313),
  Conv1d(128, 128, 3)], ConvBlock(2, 64, 3) and a depthwise 3 x 3, the
  bottlenecks, a 1 x 1 to 512, the depthwise (8, 20), a 1 x 1 to 128, the
  unused fc_out Linear(128, num_classes) and ArcFace's [num_classes, 128].
  """
  layers = [1 * 128 * 1024] + [2 * 313, 128 * 128 * 3] * 3
  layers += _conv_block(2, 64, (3, 3)) + _conv_block(64, 64, (3, 3), dw=True)
  inp = 64
  for t, c, n, _ in table:
    for _ in range(n):
      layers += _conv_block(inp, inp * t, (1, 1))
      layers += _conv_block(inp * t, inp * t, (3, 3), dw=True)
      layers += _conv_block(inp * t, c, (1, 1), linear=True)
      inp = c
  layers += _conv_block(inp, 512, (1, 1))
  layers += _conv_block(512, 512, (8, 20), dw=True, linear=True)
  layers += _conv_block(512, 128, (1, 1), linear=True)
  fc_out = 128 * num_classes + num_classes
  return sum(layers) + fc_out + num_classes * 128, fc_out


@pytest.mark.parametrize(
  "table,bottlenecks",
  [
    (PAPER_TABLE, {}),  # The module's default.
    (NET_PY_TABLE, {"bottlenecks": "liu2022"}),
  ],
)
def test_parameter_count_matches_reference(table, bottlenecks):
  model = nnx.eval_shape(
    lambda: stgram_mfn.STgramMFN(
      DCASE2020_CLASSES, **bottlenecks, rngs=nnx.Rngs(0)
    )
  )
  reference, fc_out = _reference_parameter_count(table, DCASE2020_CLASSES)
  assert _count(model) == reference - fc_out


def test_unknown_bottleneck_table_is_refused():
  with pytest.raises(AeasdError) as error:
    stgram_mfn.STgramMFN(3, bottlenecks="mobilenetv2", rngs=nnx.Rngs(0))
  assert str(error.value) == (
    "STgram-MFN: bottlenecks='mobilenetv2': expected one of"
    " ['liu2022', 'mobilefacenet']"
  )


def test_ten_second_clip_gives_the_reference_shapes():
  model = nnx.eval_shape(
    lambda: stgram_mfn.STgramMFN(DCASE2020_CLASSES, rngs=nnx.Rngs(0))
  )
  assert model.mobilefacenet.linear7.conv.kernel.shape == (8, 20, 1, 512)
  assert model.tgram.blocks[0].norm.scale.shape == (313,)
  graphdef, state = nnx.split(model)
  logits, embedding = jax.eval_shape(
    lambda state, *x: nnx.merge(graphdef, state)(*x, train=False),
    state,
    jax.ShapeDtypeStruct((2, 160_000), jnp.float32),
    jax.ShapeDtypeStruct((2, 313, 128), jnp.float32),
    jax.ShapeDtypeStruct((2,), jnp.int32),
  )
  assert logits.shape == (2, DCASE2020_CLASSES)
  assert embedding.shape == (2, 128)


def test_arcface_adds_the_margin_to_the_label_only():
  s, m = 30.0, 0.7
  head = stgram_mfn.ArcMarginProduct(
    2, 2, s=s, m=m, dtype=jnp.float32, rngs=nnx.Rngs(0)
  )
  head.weight[...] = jnp.array([[2.0, 0.0], [0.0, 0.5]])  # Normalised away.
  # Angles to class 0 on both sides of pi - m, where cos(theta + m) would
  # turn back up; the reference then takes cos(theta) - m * sin(m).
  theta = np.array([0.3, 1.0, np.pi - m + 0.1])
  x = 5 * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
  logits = np.asarray(head(jnp.asarray(x), jnp.zeros(3, jnp.int32)))
  own = np.where(
    theta < np.pi - m, np.cos(theta + m), np.cos(theta) - m * np.sin(m)
  )
  np.testing.assert_allclose(logits[:, 0], s * own, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[:, 1], s * np.sin(theta), atol=1e-5)


# The parity step, in float64. A sum of n terms in any order is within
# n * eps * sum(|terms|) of the exact one (Higham, Accuracy and Stability of
# Numerical Algorithms, 2002, chapter 4); JAX and PyTorch order theirs
# differently. The tiny setting's longest sums are the 1 x 1 convs from 512
# channels (conv1's BatchNorm statistics and kernel gradient run over 4 clips
# x 8 x 9 positions = 288). Forward and backward chain 2 x 55 layers (the
# extractor, 3 Tgram blocks, 50 ConvBlocks, ArcFace) of up to 3 sums each
# (the conv, a norm's mean and variance), on activations of unit scale after
# each norm, and ArcFace scales the logits by s = 30. Relative to a tree's
# largest value:
_FLOAT64_TOLERANCE = np.finfo(np.float64).eps * 512 * (2 * 55 * 3) * 30


# PyTorch's names of a norm's tensors, in Flax.
_NORM_NAMES = {"weight": "scale", "running_mean": "mean", "running_var": "var"}


def _jax_value(torch, tree, modules, path):
  """The NNX leaf a PyTorch path names, as PyTorch lays it out."""
  owner, leaf = path.rsplit(".", 1)
  module = modules[owner]
  if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
    leaf = "kernel"
  elif isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
    leaf = _NORM_NAMES.get(leaf, leaf)
  for part in owner.split("."):
    tree = tree[int(part) if part.isdigit() else part]
  value = np.array(tree[leaf])  # Writable, for torch.from_numpy.
  if leaf == "kernel":  # [*spatial, in, out] -> [out, in, *spatial].
    value = value.transpose(
      value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)
    )
  return value


def _torch_tensors(module):
  """(path, tensor) of every parameter and norm statistic, fc_out apart."""
  for path, tensor in [*module.named_parameters(), *module.named_buffers()]:
    if "fc_out" not in path and not path.endswith("num_batches_tracked"):
      yield path, tensor


def _assert_close(actual, expected, what):
  """Within _FLOAT64_TOLERANCE of the largest value of `expected`.

  Scaled by the whole tree, not each tensor: a gradient that cancels to
  zero in exact arithmetic (a BatchNorm bias whose shift the next BatchNorm
  removes) keeps the rounding of its larger terms.
  """
  scale = max(float(np.abs(e).max()) for e in expected.values())
  for key, e in expected.items():
    error = float(np.abs(np.asarray(actual[key]) - e).max())
    assert error <= _FLOAT64_TOLERANCE * scale, (what, key, error, scale)


def _jax_step(model, wave, log_mel, label):
  """Eval logits, then one training forward and backward, in one program."""
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  def loss(params, stats):
    train_model = nnx.merge(graphdef, params, stats)
    logits, embedding = train_model(wave, log_mel, label, train=True)
    value = optax.softmax_cross_entropy_with_integer_labels(logits, label)
    new_stats = nnx.to_pure_dict(nnx.state(train_model, nnx.BatchStat))
    return value.mean(), (logits, embedding, new_stats)

  @jax.jit
  def step(params, stats):
    eval_model = nnx.merge(graphdef, params, stats)
    eval_logits, _ = eval_model(wave, log_mel, label, train=False)
    return eval_logits, jax.value_and_grad(loss, has_aux=True)(params, stats)

  eval_logits, ((value, (logits, embedding, new_stats)), grads) = step(
    nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  )
  return dict(
    eval_logits=eval_logits,
    logits=logits,
    embedding=embedding,
    loss=value,
    grads=grads,
    new_stats=new_stats,
  )


def test_one_step_matches_pytorch(x64):
  del x64  # The model and inputs below are float64.
  torch = pytest.importorskip("torch")
  model = stgram_mfn.STgramMFN(
    CLASSES, **TINY, dtype=jnp.float64, rngs=nnx.Rngs(0)
  )
  weights = nnx.to_pure_dict(nnx.state(model))
  reference = peer_torch_stgram.stgram_mfn(
    torch, CLASSES, **TINY, pooled=TINY_POOLED
  ).double()
  modules = dict(reference.named_modules())
  with torch.no_grad():
    for path, tensor in _torch_tensors(reference):
      tensor.copy_(torch.from_numpy(_jax_value(torch, weights, modules, path)))
  # Positions each BatchNorm averages over, for PyTorch's unbiased update.
  positions = {}
  for name, module in modules.items():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.register_forward_hook(
        lambda m, x, y, name=name: positions.update(
          {name: x[0].numel() // x[0].shape[1]}
        )
      )

  wave, log_mel, label = _inputs(jnp.float64)
  ours = _jax_step(model, wave, log_mel, label)
  x = (
    torch.from_numpy(np.array(wave)),
    torch.from_numpy(np.array(log_mel).swapaxes(1, 2).copy()),
    torch.from_numpy(np.array(label)),
  )
  reference.eval()
  with torch.no_grad():
    eval_logits, _ = reference(*x)
  reference.train()
  logits, embedding = reference(*x)
  loss = torch.nn.functional.cross_entropy(logits, x[2])
  loss.backward()

  theirs = dict(
    eval_logits=eval_logits.numpy(),
    logits=logits.detach().numpy(),
    embedding=embedding.detach().numpy(),
    loss=loss.detach().numpy(),
  )
  _assert_close({k: ours[k] for k in theirs}, theirs, "outputs")
  theirs_grads = {
    p: t.grad.numpy()
    for p, t in reference.named_parameters()
    if "fc_out" not in p
  }
  assert sum(g.size for g in theirs_grads.values()) == _count(model)
  _assert_close(
    {p: _jax_value(torch, ours["grads"], modules, p) for p in theirs_grads},
    theirs_grads,
    "gradients",
  )
  _assert_close(
    {p: t.numpy() for p, t in _torch_tensors(reference) if "running" in p},
    _torch_running_statistics(torch, ours, weights, modules, positions),
    "BatchNorm statistics",
  )


def _torch_running_statistics(torch, ours, weights, modules, positions):
  """PyTorch's BatchNorm statistics after the step, from the NNX module's.

  PyTorch updates the running variance with the batch variance unbiased,
  times n / (n - 1), where Flax takes it biased, as both normalise.
  """
  expected = {}
  for name, module in modules.items():
    if not isinstance(module, torch.nn.BatchNorm2d):
      continue
    mean, var = (f"{name}.running_mean", f"{name}.running_var")
    expected[mean] = _jax_value(torch, ours["new_stats"], modules, mean)
    new = _jax_value(torch, ours["new_stats"], modules, var)
    old = _jax_value(torch, weights, modules, var)
    m, n = 1 - module.momentum, positions[name]
    batch_var = (new - m * old) / (1 - m)
    expected[var] = m * old + (1 - m) * batch_var * n / (n - 1)
  return expected


def test_parameter_count_matches_pytorch():
  torch = pytest.importorskip("torch")
  reference = peer_torch_stgram.stgram_mfn(
    torch,
    DCASE2020_CLASSES,
    n_mels=128,
    frames=313,
    win_length=1024,
    hop_length=512,
    pooled=(8, 20),
  )
  model = nnx.eval_shape(
    lambda: stgram_mfn.STgramMFN(DCASE2020_CLASSES, rngs=nnx.Rngs(0))
  )
  fc_out = sum(p.numel() for p in reference.mobilefacenet.fc_out.parameters())
  assert sum(p.numel() for p in reference.parameters()) == (
    _count(model) + fc_out
  )
