"""AE-ASD parity: the presets train end to end; one step matches PyTorch's.

The PyTorch reference here is written from AE-ASD's description
(../shared/reference/ANCHORS.md): Linear-BatchNorm1d-ReLU blocks, a linear
output, and for the VAE three Linear-BN-ReLU heads decoded as
z * exp(logvar / 2) + mu, trained on MSE plus the KL summed over the batch.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aeasd_jax.training import config_check
from aeasd_jax.workdir import metric_log
from aeasd_jax.training import state
from aeasd_jax.training import steps
from aeasd_jax.training import train
from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout
from configs import aeasd_ae
from configs import aeasd_idnn
from configs import aeasd_vae

PRESETS = {"AE": aeasd_ae, "IDNN": aeasd_idnn, "VAE": aeasd_vae}

# The step compared below: a batch of 64 vectors of 5 frames x 16 mels into
# blocks 32 wide. Its longest sums are over the batch (BatchNorm's
# statistics, the weight gradients) and over a layer's inputs (at most 80).
_BATCH, _FAN_IN = 64, 80
# A float32 sum of n terms in any order is within n * eps * sum(|terms|) of
# the exact one (Higham 2002, chapter 4); JAX and PyTorch order theirs
# differently. Forward and backward chain at most 2 * 8 such sums (2 * depth
# blocks, the bottleneck or the VAE's heads, the output), and the inputs are
# of unit scale, so BatchNorm's division by a batch standard deviation ~ 1
# does not amplify the error. Relative to a tree's largest value:
_FLOAT32_TOLERANCE = np.finfo(np.float32).eps * (_BATCH + _FAN_IN) * 2 * 8


def _tiny(config, tiny_root, session_cache_dir):
  """A preset, shrunk to the tiny dataset and a CI-sized run."""
  config.data.root = str(tiny_root)
  config.data.cache_dir = str(session_cache_dir)
  config.compile_cache_dir = "off"
  config.features.n_mels = 16
  config.model.hidden = 32
  config.model.depth = 2
  config.model.bottleneck = 4
  config.train.epochs = 2
  config.train.select_every = 1  # So that the dev AUC selection runs.
  config.train.batch_size = _BATCH
  config.train.checkpoint_every = 1
  config.score.batch_windows = 256
  return config


def test_aeasd_preset_batch_is_refused_on_short_clips(
  tiny_root, session_cache_dir, tmp_path
):
  config = _tiny(aeasd_ae.get_config(), tiny_root, session_cache_dir)
  config.train.batch_size = 128 * 309
  with pytest.raises(AeasdError, match="config.train.batch_size=39552"):
    train.train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_aeasd_presets_train_and_select_by_dev_auc(
  name, tiny_root, session_cache_dir, tmp_path
):
  config = _tiny(PRESETS[name].get_config(), tiny_root, session_cache_dir)
  train.train_and_evaluate(config, tmp_path)
  records = [
    r
    for r in metric_log.read_records(layout.Workdir(tmp_path).metrics_file)
    if "epoch" in r
  ]
  assert [r["epoch"] for r in records] == [1, 2]
  for record in records:
    assert all(math.isfinite(v) for v in record["train_loss"].values())
    assert record["dev_auc"]


def _torch_reference(torch, config, params, batch_stats):
  """PyTorch modules of AE-ASD's structure, holding the JAX weights."""
  nn = torch.nn
  model_config = config.model

  class Block(nn.Module):
    def __init__(self, a, b):
      super().__init__()
      self.dense = nn.Linear(a, b)
      self.norm = nn.BatchNorm1d(
        b,
        # PyTorch's momentum weighs the new batch; Flax's the running value.
        momentum=1 - model_config.bn_momentum,
        eps=model_config.bn_epsilon,
      )

    def forward(self, x):
      return torch.relu(self.norm(self.dense(x)))

  def stack(widths):
    return nn.ModuleList([Block(a, b) for a, b in zip(widths[:-1], widths[1:])])

  hidden, depth = model_config.hidden, model_config.depth
  bottleneck = model_config.bottleneck
  frames, n_mels = model_config.frames, model_config.n_mels
  interpolate = model_config.name == "IDNN"
  in_features = (frames - 1) * n_mels if interpolate else frames * n_mels
  out_features = n_mels if interpolate else frames * n_mels
  variational = model_config.name == "VAE"

  class Reference(nn.Module):
    def __init__(self):
      super().__init__()
      if variational:
        self.encoder = stack([in_features] + [hidden] * depth)
        self.mean = Block(hidden, bottleneck)
        self.log_variance = Block(hidden, bottleneck)
        self.z = Block(hidden, bottleneck)
      else:
        self.encoder = stack([in_features] + [hidden] * depth + [bottleneck])
      self.decoder = stack([bottleneck] + [hidden] * depth)
      self.output = nn.Linear(hidden, out_features)

    def forward(self, x):
      for block in self.encoder:
        x = block(x)
      kl = None
      if variational:
        mu, log_variance = self.mean(x), self.log_variance(x)
        x = self.z(x) * torch.exp(0.5 * log_variance) + mu
        kl = -0.5 * torch.sum(
          1 + log_variance - torch.exp(log_variance) - mu**2
        )
      for block in self.decoder:
        x = block(x)
      return self.output(x), kl

  reference = Reference()
  with torch.no_grad():
    for path, tensor in _torch_tensors(reference):
      value = np.array(_jax_value(params, batch_stats, path))  # Writable.
      tensor.copy_(torch.from_numpy(value))
  return reference


def _torch_tensors(module):
  """(path, tensor) of every parameter and BatchNorm running statistic."""
  yield from module.named_parameters()
  for path, buffer in module.named_buffers():
    if not path.endswith("num_batches_tracked"):
      yield path, buffer


# PyTorch's names of a Linear's and a BatchNorm1d's tensors, in Flax.
_FLAX_NAMES = {
  ("dense", "weight"): "kernel",
  ("output", "weight"): "kernel",
  ("norm", "weight"): "scale",
  ("norm", "running_mean"): "mean",
  ("norm", "running_var"): "var",
}


def _jax_value(params, batch_stats, path):
  """The JAX tensor a PyTorch path names, as PyTorch lays it out."""
  parts = path.split(".")
  leaf = _FLAX_NAMES.get((parts[-2], parts[-1]), parts[-1])
  tree = batch_stats if leaf in ("mean", "var") else params
  for part in parts[:-1]:
    tree = tree[int(part) if part.isdigit() else part]
  value = np.asarray(tree[leaf], np.float32)
  return value.T if leaf == "kernel" else value


def _assert_close(actual, expected, what):
  """Within _FLOAT32_TOLERANCE of the largest value of `expected`."""
  scale = max(float(np.abs(e).max()) for e in expected.values())
  for key, e in expected.items():
    error = float(np.abs(np.asarray(actual[key]) - e).max())
    assert error <= _FLOAT32_TOLERANCE * scale, (what, key, error, scale)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_step_matches_pytorch(name):
  torch = pytest.importorskip("torch")
  config = PRESETS[name].get_config()
  config.features.n_mels = 16
  config.model.hidden = 32
  config.model.depth = 2
  config.model.bottleneck = 4
  config.train.batch_size = _BATCH
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  setup = state.make_setup(config, ["group"], mesh)
  model = setup.build(nnx.Rngs(0))
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params = nnx.to_pure_dict(params)
  batch_stats = nnx.to_pure_dict(batch_stats)
  reference = _torch_reference(torch, config, params, batch_stats)

  window = jax.random.normal(
    jax.random.key(1), (_BATCH, config.model.frames, config.model.n_mels)
  )
  key = jax.random.key(2)  # Unused: these networks draw no noise.
  (loss, new_stats), grads = jax.value_and_grad(steps.loss, 1, has_aux=True)(
    setup, params, batch_stats, window, key
  )
  merged = nnx.merge(setup.graphdef, params, batch_stats)
  x, y = (
    np.asarray(v) for v in window_data.split_window(window, setup.interpolate)
  )
  output, _ = merged(jnp.asarray(x), train=True, key=key)

  reference.train()
  torch_output, kl = reference(torch.from_numpy(x))
  torch_loss = torch.nn.functional.mse_loss(torch_output, torch.from_numpy(y))
  if kl is not None:
    torch_loss = torch_loss + kl
  torch_loss.backward()

  _assert_close(
    {"output": torch_output.detach().numpy(), "loss": torch_loss.item()},
    {"output": np.asarray(output), "loss": np.asarray(loss)},
    "forward",
  )
  torch_grads = {p: t.grad.numpy() for p, t in reference.named_parameters()}
  _assert_close(
    torch_grads,
    {p: _jax_value(grads, None, p) for p in torch_grads},
    "gradients",
  )
  # PyTorch's running variance takes the batch variance unbiased, times
  # n / (n - 1), where Flax's takes it biased, as both normalise; the
  # difference is 1 / (n - 1) of the batch's share, 2.5e-5 at AE-ASD's batch.
  m = config.model.bn_momentum
  expected = {}
  for path, tensor in _torch_tensors(reference):
    if path.endswith("running_mean") or path.endswith("running_var"):
      new = _jax_value(None, new_stats, path)
      if path.endswith("running_var"):
        old = _jax_value(None, batch_stats, path)
        batch_var = (new - m * old) / (1 - m)
        new = m * old + (1 - m) * batch_var * _BATCH / (_BATCH - 1)
      expected[path] = new
  _assert_close(
    {p: t.numpy() for p, t in _torch_tensors(reference) if p in expected},
    expected,
    "BatchNorm statistics",
  )


@pytest.mark.parametrize(
  "setting,value,expected",
  [
    ("init", "pytorch", "one of ['keras', 'torch']"),
    ("vae", "AE-ASD", "one of ['aeasd', 'reparameterised']"),
  ],
)
def test_new_model_settings_are_checked(setting, value, expected):
  config = aeasd_vae.get_config()
  config.model[setting] = value
  with pytest.raises(AeasdError) as error:
    config_check.check_config(config)
  assert str(error.value) == (
    f"config.model.{setting}={value!r}: expected {expected}"
  )
