"""A PyTorch peer of the baseline AE, trained AE-ASD style, data on the device.

Written from the published model description; torch is a benchmark-only option.
"""

import math
import statistics
import time

import torch
from torch import nn

N_MELS = 128
FRAMES = 5  # Frames per vector: 640 inputs and outputs.
FRAMES_PER_CLIP = 313  # A 10 s DCASE clip.
WINDOWS_PER_CLIP = FRAMES_PER_CLIP - FRAMES + 1
AE_PARAMETERS = 267_928  # The baseline's trainable parameter count.
MODES = ("eager", "cuda_graph")


def autoencoder(hidden=128, depth=4, bottleneck=8):
  """[Linear-BN-ReLU] x depth, Linear-BN-ReLU bottleneck, the mirror, Linear."""
  width = FRAMES * N_MELS
  widths = [width] + [hidden] * depth + [bottleneck] + [hidden] * depth
  layers = []
  for a, b in zip(widths[:-1], widths[1:]):
    layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
  layers.append(nn.Linear(hidden, width))
  return nn.Sequential(*layers)


def parameter_count(model):
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _Run:
  """One AE, its Adam state, and random frames resident on the device."""

  def __init__(self, batch_size, device, mode, clips, seed):
    torch.manual_seed(seed)
    self.device = torch.device(device)
    self.batch_size = batch_size
    cuda = self.device.type == "cuda"
    self.model = autoencoder().to(self.device)
    count = parameter_count(self.model)
    if count != AE_PARAMETERS:
      raise RuntimeError(
        f"peer AE has {count} trainable parameters; expected"
        f" {AE_PARAMETERS} (the DCASE baseline's)"
      )
    self.model.train()
    # Capturing the optimizer in a CUDA graph needs its step counts on the
    # device (capturable); fused Adam is one kernel for all parameters.
    self.optimizer = torch.optim.Adam(
      self.model.parameters(),
      lr=1e-3,
      fused=True if cuda else None,
      capturable=mode == "cuda_graph",
    )
    self.frames = torch.randn(
      clips * FRAMES_PER_CLIP, N_MELS, device=self.device
    )
    clip_start = torch.arange(clips, device=self.device) * FRAMES_PER_CLIP
    self.starts = (
      clip_start[:, None] + torch.arange(WINDOWS_PER_CLIP, device=self.device)
    ).reshape(-1)
    self.offsets = torch.arange(FRAMES, device=self.device)
    self.static_x = None
    self.graph = None
    if mode == "cuda_graph":
      self._capture()

  def batch(self):
    """Random vectors gathered from the device frames, as the JAX epoch does."""
    pick = torch.randint(
      self.starts.numel(), (self.batch_size,), device=self.device
    )
    rows = self.starts[pick, None] + self.offsets
    return self.frames[rows].reshape(self.batch_size, -1)

  def _update(self, x):
    loss = nn.functional.mse_loss(self.model(x), x)
    loss.backward()
    self.optimizer.step()

  def eager_step(self):
    self.optimizer.zero_grad(set_to_none=True)
    self._update(self.batch())

  def graph_step(self):
    self.static_x.copy_(self.batch())
    self.graph.replay()

  def _capture(self):
    """Records one training step on static buffers, as PyTorch's docs show."""
    self.static_x = torch.zeros(
      self.batch_size, FRAMES * N_MELS, device=self.device
    )
    # Warm-up on a side stream lets the optimizer and autograd allocate their
    # state outside the captured pool.
    side = torch.cuda.Stream(self.device)
    side.wait_stream(torch.cuda.current_stream(self.device))
    with torch.cuda.stream(side):
      for _ in range(3):
        self.static_x.copy_(self.batch())
        self.optimizer.zero_grad(set_to_none=True)
        self._update(self.static_x)
    torch.cuda.current_stream(self.device).wait_stream(side)
    self.graph = torch.cuda.CUDAGraph()
    # Gradients are None at capture, so the graph's backward writes them
    # afresh on every replay instead of accumulating.
    self.optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(self.graph):
      self._update(self.static_x)


def _synchronize(device):
  if torch.device(device).type == "cuda":
    torch.cuda.synchronize(device)


def measure(
  batch_size, steps, device, mode, *, clips=None, repeats=5, warmup=3, seed=0
):
  """Training speed of the peer AE in samples/s: the median of `repeats` loops.

  Args:
    batch_size: vectors per Adam step.
    steps: Adam steps per timed loop.
    device: a torch device string, such as "cuda" or "cpu".
    mode: "eager", or "cuda_graph" (one captured step replayed; CUDA only).
    clips: 10 s clips of random frames on the device; None is enough for
      one batch and at least 24.
    repeats: timed loops; the median is returned.
    warmup: untimed steps first (allocation, cuDNN/cuBLAS heuristics).
    seed: torch's seed for the weights and the data.

  Returns:
    Samples (5-frame vectors) per second.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}")
  if mode == "cuda_graph" and torch.device(device).type != "cuda":
    raise ValueError(f"mode='cuda_graph' needs a CUDA device, got {device!r}")
  if clips is None:
    clips = max(24, math.ceil(batch_size / WINDOWS_PER_CLIP))
  if torch.device(device).type == "cuda":
    # JAX multiplies float32 matrices in TF32 on recent GPUs by default; torch
    # does not, and the peer should do the same arithmetic.
    torch.set_float32_matmul_precision("high")
  run = _Run(batch_size, device, mode, clips, seed)
  step = run.graph_step if mode == "cuda_graph" else run.eager_step
  for _ in range(warmup):
    step()
  _synchronize(device)
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    _synchronize(device)
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def available_modes(device):
  """The modes `measure` supports on this device."""
  return MODES if torch.device(device).type == "cuda" else ("eager",)


def default_device():
  return "cuda" if torch.cuda.is_available() else "cpu"
