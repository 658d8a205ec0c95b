"""Training speed of the STgram-MFN classifier, beside a PyTorch transcription.

Ours: the engine's compiled epoch (Trainer.epoch: the one-scan epoch of every
seed under vmap, validation included) on random clip examples held on the
device. The peer: benchmarks/peer_torch_stgram.py's module, eager, Adam,
cross-entropy through ArcFace, on a random batch of the same shapes. Both in
clips per second of training, same run, same threads.

Usage: python benchmarks/classifier_speed.py [--seconds=2.0] [--batch=32]
  [--seeds=1] [--clips=256] [--peer] [--out=results.json]
"""

import argparse
import math
import pathlib
import sys
import time

import jax
import numpy as np

# configs/ and benchmarks/ sit beside the package, not inside it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax.data import window_data
from aeasd_jax.models import registry
from aeasd_jax.training import trainer as trainer_lib
from benchmarks import common
from benchmarks import peer_torch_stgram
from configs import stgram_mfn as preset
# pylint: enable=g-import-not-at-top,wrong-import-position

NUM_CLASSES = 41  # DCASE 2020's machine ids.


def _config(args):
  config = preset.get_config()
  config.data.clip_seconds = args.seconds
  config.train.batch_size = args.batch
  config.train.num_seeds = args.seeds
  return config


def _clip_examples(config, clips, seed=0):
  """Host WindowData of random clip examples: train clips, then 1 val batch."""
  frames = registry.example_frames(config)
  samples = int(config.data.clip_seconds * config.features.sample_rate)
  n_mels = config.features.n_mels
  total = clips + config.train.batch_size
  rng = np.random.default_rng(seed)
  starts = (np.arange(total) * frames).astype(np.int32)
  return window_data.WindowData(
    rng.standard_normal((total * frames, n_mels), np.float32),
    starts[None, :clips],
    np.array([clips], np.int32),
    starts[None, clips:],
    np.array([total - clips], np.int32),
    rng.integers(0, NUM_CLASSES, total).astype(np.int32),
    rng.standard_normal((total, samples), np.float32),
  )


def ours(config, clips, epochs):
  """(clips/s of training, compile seconds) of the engine's epoch."""
  host = _clip_examples(config, clips)
  trainer = trainer_lib.Trainer(
    config,
    ["all"],
    host,
    class_names=[f"class{i}" for i in range(NUM_CLASSES)],
  )
  start = time.perf_counter()
  trainer.compile()
  compile_s = time.perf_counter() - start
  state = trainer.init_state()
  state, metrics = trainer.epoch(state)  # Warm: the first call's transfers.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(epochs):
    state, metrics = trainer.epoch(state)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  steps = clips // config.train.batch_size
  trained = epochs * steps * config.train.batch_size * config.train.num_seeds
  return trained / seconds, compile_s


def peer(config, steps):
  """Clips/s of eager PyTorch training steps (one model) of the same shapes."""
  import torch  # pylint: disable=g-import-not-at-top

  frames = registry.example_frames(config)
  samples = int(config.data.clip_seconds * config.features.sample_rate)
  n_mels, batch = config.features.n_mels, config.train.batch_size
  pooled = tuple(
    math.ceil(n / 16) for n in (n_mels, frames)
  )  # Four stride-2 stages of the paper's table.
  module = peer_torch_stgram.stgram_mfn(
    torch,
    NUM_CLASSES,
    n_mels=n_mels,
    frames=frames,
    win_length=config.features.n_fft,
    hop_length=config.features.hop_length,
    pooled=pooled,
  )
  device = "cuda" if torch.cuda.is_available() else "cpu"
  module.to(device)
  optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
  wave = torch.randn(batch, samples, device=device)
  mel = torch.randn(batch, n_mels, frames, device=device)
  label = torch.randint(0, NUM_CLASSES, (batch,), device=device)

  def step():
    logits, _ = module(wave, mel, label)
    loss = torch.nn.functional.cross_entropy(logits, label)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  step()  # Warm.
  if device == "cuda":
    torch.cuda.synchronize()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
  return steps * batch / (time.perf_counter() - start), torch.__version__


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=2.0)
  parser.add_argument("--batch", type=common.positive_int, default=32)
  parser.add_argument("--seeds", type=common.positive_int, default=1)
  parser.add_argument("--clips", type=common.positive_int, default=256)
  parser.add_argument("--epochs", type=common.positive_int, default=2)
  parser.add_argument("--peer", action="store_true")
  parser.add_argument("--peer_steps", type=common.positive_int, default=8)
  parser.add_argument("--torch_threads", type=common.positive_int, default=2)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  config = _config(args)
  rate, compile_s = ours(config, args.clips, args.epochs)
  record = {
    "setting": vars(args),
    "ours_clips_per_s": rate,
    "compile_s": compile_s,
    "load_average": common.load_average(),
  }
  versions = {}
  if args.peer:
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(args.torch_threads)
    record["peer_clips_per_s"], versions["torch"] = peer(
      config, args.peer_steps
    )
    # Ours trains num_seeds models per step; the peer one.
    record["ratio"] = rate / record["peer_clips_per_s"]
  result = {**common.header(**versions), "record": record}
  print(
    f"STgram-MFN, {args.seconds:g}-s clips, batch {args.batch},"
    f" {args.seeds} seed(s): ours {rate:.1f} clips/s"
    + (
      f", eager PyTorch {record['peer_clips_per_s']:.1f} clips/s"
      f" ({record['ratio']:.2f}x)"
      if args.peer
      else ""
    )
    + f"; compile {compile_s:.1f} s"
  )
  if args.out:
    common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
