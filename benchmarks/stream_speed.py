"""Streamed versus device-resident training throughput, in the same run.

Usage: python benchmarks/stream_speed.py [--clips=64] [--chunk_clips=16]
                                        [--out=JSON]
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax.data import cache
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.training import trainer as trainer_lib
from aeasd_jax.data import window_data
from benchmarks import common
from configs import ae
# pylint: enable=g-import-not-at-top,wrong-import-position


def fake_cache(directory, groups, clips_per_group, seed=0):
  """A memory-mapped FeatureCache of random frames, as the real one is read."""
  num_clips = groups * clips_per_group
  path = pathlib.Path(directory) / cache.FRAMES_FILE
  frames = np.lib.format.open_memmap(
    path, "w+", np.float32, (num_clips * common.FRAMES_PER_CLIP, common.N_MELS)
  )
  frames[:] = (
    np.random.default_rng(seed).normal(-40, 10, frames.shape).astype(np.float32)
  )
  frames.flush()
  clips = tuple(
    dcase.Clip(
      f"g{c // clips_per_group}_{c}.wav",
      f"type{c // clips_per_group}",
      "id_00",
      0,
      "train",
      "dev",
    )
    for c in range(num_clips)
  )
  lengths = np.full(num_clips, common.FRAMES_PER_CLIP, np.int64)
  features = cache.FeatureCache(
    pathlib.Path(directory),
    np.load(path, mmap_mode="r"),
    clips,
    np.cumsum(lengths) - lengths,
    lengths,
    (),
  )
  group_list = [
    dataset.Group(
      f"type{g}",
      np.arange(g * clips_per_group, (g + 1) * clips_per_group - 1),
      np.asarray([(g + 1) * clips_per_group - 1]),
      np.zeros(0, int),
    )
    for g in range(groups)
  ]
  return features, group_list


def time_epochs(trainer, repeats):
  """Compile seconds and the median epoch seconds (after one warm-up epoch)."""
  start = time.perf_counter()
  trainer.compile()
  compile_s = time.perf_counter() - start
  state = trainer.init_state()
  times, steps = [], 0
  for _ in range(repeats + 1):
    start = time.perf_counter()
    state, metrics = trainer.epoch(state)
    metrics = jax.device_get(trainer_lib.local_copy(metrics))
    times.append(time.perf_counter() - start)
    steps = int(metrics["steps"].sum())
  return compile_s, statistics.median(times[1:]), steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--groups", type=common.positive_int, default=6)
  parser.add_argument(
    "--clips",
    type=common.positive_int,
    default=64,
    help="clips per group (one of them held out)",
  )
  parser.add_argument("--chunk_clips", type=common.positive_int, default=16)
  parser.add_argument("--batch_size", type=common.positive_int, default=512)
  parser.add_argument("--repeats", type=common.positive_int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  config = ae.get_config()
  config.train.batch_size = args.batch_size
  config.score.batch_windows = 4096
  records = []
  with tempfile.TemporaryDirectory() as work:
    features, groups = fake_cache(work, args.groups, args.clips)
    names = [g.name for g in groups]
    val = window_data.host_windows(
      features,
      [[]] * len(groups),
      [g.val_clips for g in groups],
      config.model.frames,
    )
    for mode in ("resident", "streamed"):
      if mode == "resident":
        trainer = trainer_lib.Trainer(
          config,
          names,
          window_data.gather_host_windows(
            features, groups, config.model.frames
          ),
        )
      else:
        trainer = trainer_lib.Trainer(
          config,
          names,
          val,
          chunks=lambda epoch: window_data.stream_chunks(
            features,
            groups,
            config.model.frames,
            args.chunk_clips,
            epoch,
            seed=0,
          ),
        )
      compile_s, epoch_s, steps = time_epochs(trainer, args.repeats)
      records.append(
        {
          "mode": mode,
          "compile_s": compile_s,
          "epoch_s": epoch_s,
          "steps": steps,
          "samples_per_s": steps * args.batch_size / epoch_s,
        }
      )
  resident, streamed = records
  print(f"{'mode':<10} {'samples/s':>12} {'epoch s':>9} {'compile s':>10}")
  for r in records:
    print(
      f"{r['mode']:<10} {r['samples_per_s']:>12,.0f} {r['epoch_s']:>9.3f}"
      f" {r['compile_s']:>10.2f}"
    )
  print(
    f"streamed / resident: "
    f"{streamed['samples_per_s'] / resident['samples_per_s']:.2f}"
  )
  if args.out:
    common.write_json(
      args.out,
      {"header": common.header(), "settings": vars(args), "records": records},
    )


if __name__ == "__main__":
  main()
