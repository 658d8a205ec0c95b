"""Training speed of the compiled epoch, in model-samples/s, per setting.

Usage: python benchmarks/train_speed.py [--quick] [--peer] [--out=results.json]
  [--kernels=xla,jax_fused]
"""

import argparse
import dataclasses
import collections
import math
import pathlib
import re
import statistics
import sys
import time

import jax
import numpy as np

# configs/ and benchmarks/ sit beside the package, not inside it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax.training import config_check
from aeasd_jax import runtime
from aeasd_jax.training import trainer as trainer_lib
from benchmarks import common
# pylint: enable=g-import-not-at-top,wrong-import-position

# The baseline's batch, and AE-ASD's (128 clips x 309 vectors).
BATCH_SIZES = (512, 39552)
# One model; one per machine type; one per type times 4 seeds.
MODEL_COUNTS = ((1, 1), (6, 1), (6, 4))


@dataclasses.dataclass(frozen=True)
class Setting:
  """One timed configuration: a model, a batch size and how many models."""

  model: str
  batch_size: int
  groups: int
  seeds: int

  @property
  def num_models(self):
    return self.groups * self.seeds

  @classmethod
  def parse(cls, text):
    try:
      model, batch, count = text.split(":")
      groups, seeds = count.lower().split("x")
      setting = cls(model.upper(), int(batch), int(groups), int(seeds))
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"{text!r}: expected MODEL:BATCH:GROUPSxSEEDS, e.g. AE:512:6x4"
      ) from None
    if (
      setting.model not in common.CONFIGS
      or min(setting.batch_size, setting.groups, setting.seeds) < 1
    ):
      raise argparse.ArgumentTypeError(
        f"{text!r}: expected a model in {sorted(common.CONFIGS)} and"
        " positive numbers"
      )
    return setting


def full_grid():
  return [
    Setting(m, b, g, s)
    for m in common.CONFIGS
    for b in BATCH_SIZES
    for g, s in MODEL_COUNTS
  ]


def quick_grid():
  # One large-batch setting shows the other regime; one model keeps it cheap.
  return [Setting(m, 512, g, 1) for m in common.CONFIGS for g in (1, 6)] + [
    Setting("AE", 39552, 1, 1)
  ]


def trainable_counts(params, num_models):
  """(all trainable values, matmul weights) of one model of a stacked tree.

  Training costs about 6 FLOPs per matmul weight per sample: 2 forward and
  4 backward; biases and BatchNorm are noise beside them.
  """
  total = weights = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    total += leaf.size
    if getattr(path[-1], "key", None) == "kernel":
      weights += leaf.size
  return total // num_models, weights // num_models


def _program_bytes(compiled):
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def _peak_device_bytes():
  stats = jax.local_devices()[0].memory_stats()
  return None if stats is None else stats.get("peak_bytes_in_use")


# Optimised-HLO instructions that launch no kernel of their own.
_NOT_KERNELS = {
  "parameter",
  "constant",
  "get-tuple-element",
  "tuple",
  "bitcast",
  "copy-start",
  "copy-done",
}


def loop_body_counts(hlo_text):
  """Ops of the training scan's loop body in an optimised HLO module.

  The body of the while loop with the most instructions (the training scan;
  validation's is smaller): its top-level ops by opcode, and "kernels", the
  ops that launch work (fusions, dots, custom calls, reduces, ...).
  """
  computations, name = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      name = head.group(1)
      computations[name] = []
    elif line.startswith("}"):
      name = None
    elif name and " = " in line:
      opcode = re.search(r"= \S+ ([\w\-]+)\(", line)
      if opcode:
        computations[name].append(opcode.group(1))
  bodies = re.findall(r"body=%?([\w.\-]+)", hlo_text)
  if not bodies:
    return {}
  body = max(bodies, key=lambda b: len(computations.get(b, ())))
  ops = collections.Counter(computations.get(body, ()))
  return {
    "kernels": sum(n for op, n in ops.items() if op not in _NOT_KERNELS),
    "fusion": ops["fusion"],
    "dot": ops["dot"],
    "custom-call": ops["custom-call"],
    "reduce": ops["reduce"],
    "all": dict(ops),
  }


def time_setting(
  setting,
  host_windows,
  clips_per_group,
  repeats,
  compute_dtype,
  dump_hlo=None,
  kernels="auto",
):
  """Compiles and times one setting's epoch; returns its JSON record."""
  config = common.CONFIGS[setting.model].get_config()
  config.train.kernels = kernels
  config.train.batch_size = setting.batch_size
  config.train.num_seeds = setting.seeds
  config.model.compute_dtype = compute_dtype
  val_windows = int(host_windows.val_counts.max())
  config_check.check_config(config)
  group_names = [f"group{g}" for g in range(setting.groups)]
  trainer = trainer_lib.Trainer(config, group_names, host_windows)
  state = trainer.init_state()
  start = time.perf_counter()
  program = trainer.epoch_fn.lower(state, trainer.windows).compile()
  compile_s = time.perf_counter() - start
  if dump_hlo:
    path = pathlib.Path(dump_hlo) / (
      f"{setting.model}_{setting.batch_size}_{setting.groups}x"
      f"{setting.seeds}_{compute_dtype}_{kernels}.hlo.txt"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(program.as_text())
  # The epoch donates the state, so every call takes the one returned last.
  state, metrics = program(state, trainer.windows)  # Warm-up.
  jax.block_until_ready((state, metrics))
  epoch_s = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = program(state, trainer.windows)
    jax.block_until_ready((state, metrics))
    epoch_s.append(time.perf_counter() - start)
  counts = host_windows.train_counts[trainer.setup.group_of_model]
  steps = counts // setting.batch_size
  samples = int(steps.sum()) * setting.batch_size
  params, weights = trainable_counts(state.params, setting.num_models)
  rate = samples / statistics.median(epoch_s)
  return {
    "model": setting.model,
    "batch_size": setting.batch_size,
    "groups": setting.groups,
    "seeds": setting.seeds,
    "models": setting.num_models,
    "clips_per_group": clips_per_group,
    "compute_dtype": compute_dtype,
    "kernels": trainer.setup.kernels,
    "loop_body": loop_body_counts(program.as_text() or ""),
    "val_windows_per_group": val_windows,
    "steps_per_epoch": int(steps.max()),
    "samples_per_epoch": samples,
    "samples_per_s": rate,
    "trainable_params_per_model": params,
    "flops_per_sample": 6 * weights,
    "tflops": rate * 6 * weights / 1e12,
    "compile_s": compile_s,
    "epoch_s": statistics.median(epoch_s),
    "epoch_s_all": epoch_s,
    "program_bytes": _program_bytes(program),
    "peak_device_bytes": _peak_device_bytes(),
    "finite": bool(np.all(jax.device_get(metrics["finite"]))),
  }


def header(peer_torch):
  versions = {}
  if peer_torch is not None:
    versions = {
      "torch": peer_torch.torch.__version__,
      "torch_threads": peer_torch.torch.get_num_threads(),
    }
  return {
    **common.header(**versions),
    "notes": (
      "samples_per_s counts every model's samples (model-samples/s)"
      " over the whole compiled epoch, shuffle and validation"
      " included; flops_per_sample is 6 x the matmul weights;"
      " peak_device_bytes is the process's high-water mark so far;"
      " program_bytes is XLA's estimate for the epoch program."
    ),
  }


def _import_peer(torch_threads):
  try:
    # pylint: disable-next=g-import-not-at-top
    from benchmarks import peer_torch
  except ImportError as e:
    print(f"torch is not importable ({e}); skipping the PyTorch peer.")
    return None
  if torch_threads:
    peer_torch.torch.set_num_threads(torch_threads)
  return peer_torch


def peer_rates(peer_torch, record, max_steps, repeats, cache):
  """{mode: samples/s} of the one-model peer at the record's batch size."""
  batch = record["batch_size"]
  if batch not in cache:
    device = peer_torch.default_device()
    steps = max(2, min(max_steps, record["steps_per_epoch"]))
    cache[batch] = {
      mode: peer_torch.measure(
        batch,
        steps,
        device,
        mode,
        clips=record["clips_per_group"],
        repeats=repeats,
      )
      for mode in peer_torch.available_modes(device)
    }
  return cache[batch]


def print_table(records):
  print(
    f"{'model':<5} {'batch':>6} {'models':>7} {'M samp/s':>9}"
    f" {'TFLOP/s':>8} {'compile s':>9} {'epoch s':>8}  ours/peer"
  )
  for r in records:
    ratios = " ".join(
      f"{mode}={ratio:.2f}x"
      for mode, ratio in r.get("ours_over_peer", {}).items()
    )
    print(
      f"{r['model']:<5} {r['batch_size']:>6}"
      f" {r['groups']:>4}x{r['seeds']:<2} {r['samples_per_s'] / 1e6:>9.4f}"
      f" {r['tflops']:>8.4f} {r['compile_s']:>9.2f} {r['epoch_s']:>8.3f}"
      f"  {ratios}"
    )


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a reduced grid on few clips: a minute or two on 2 CPU cores",
  )
  parser.add_argument(
    "--peer",
    action="store_true",
    help="also time the PyTorch peer (benchmarks/peer_torch.py) on the AE"
    " settings and print ours / peer; skipped when torch is missing",
  )
  parser.add_argument("--out", help="write the JSON results here")
  parser.add_argument(
    "--settings",
    type=lambda text: [Setting.parse(s) for s in text.split(",")],
    help="comma-separated MODEL:BATCH:GROUPSxSEEDS entries, e.g."
    " AE:512:6x4, instead of the grid",
  )
  parser.add_argument(
    "--clips_per_group",
    type=common.positive_int,
    help="training clips of 313 frames per group; default 7000 (a DCASE"
    " machine type with its additional data), 24 with --quick; raised"
    " where a setting needs more for one full batch",
  )
  parser.add_argument(
    "--val_clips",
    type=common.positive_int,
    default=1,
    help="validation clips per group, which every epoch scores",
  )
  parser.add_argument(
    "--repeats",
    type=common.positive_int,
    help="timed epochs per setting after one warm-up epoch; the median"
    " counts; default 5, 3 with --quick",
  )
  parser.add_argument(
    "--peer_steps",
    type=common.positive_int,
    default=200,
    help="most Adam steps per timed peer loop; never more than one epoch"
    " of the same setting",
  )
  parser.add_argument(
    "--compute_dtype",
    choices=("float32", "bfloat16"),
    default="float32",
    help="config.model.compute_dtype for every setting",
  )
  parser.add_argument(
    "--kernels",
    type=lambda text: text.split(","),
    default=["auto"],
    help="comma-separated config.train.kernels values, each setting timed"
    " with each, e.g. xla,jax_fused",
  )
  parser.add_argument(
    "--dump_hlo", help="write each setting's optimised epoch HLO here"
  )
  parser.add_argument(
    "--torch_threads",
    type=common.positive_int,
    help="torch.set_num_threads for a CPU peer; default torch's own",
  )
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  settings = args.settings or (quick_grid() if args.quick else full_grid())
  base_clips = args.clips_per_group or (24 if args.quick else 7000)
  repeats = args.repeats or (3 if args.quick else 5)
  peer_torch = _import_peer(args.torch_threads) if args.peer else None
  results = {"header": header(peer_torch), "records": []}
  groups = max(s.groups for s in settings)
  windows, peer_cache = {}, {}
  for setting in settings:
    frames_per_window = common.CONFIGS[setting.model].get_config().model.frames
    # Every group needs one full batch, or the library refuses the run.
    clips = max(
      base_clips,
      math.ceil(
        setting.batch_size / common.windows_per_clip(frames_per_window)
      ),
    )
    key = (clips, frames_per_window)
    if key not in windows:
      windows[key] = common.synthetic_windows(
        groups, clips, args.val_clips, frames_per_window
      )
    # Groups are laid out one after another, so a prefix is fewer groups.
    host = windows[key]
    host = host._replace(
      frames=host.frames[
        : setting.groups * (clips + args.val_clips) * common.FRAMES_PER_CLIP
      ],
      **{
        name: getattr(host, name)[: setting.groups]
        for name in ("train_starts", "train_counts", "val_starts", "val_counts")
      },
    )
    for kernels in args.kernels:
      record = time_setting(
        setting,
        host,
        clips,
        repeats,
        args.compute_dtype,
        args.dump_hlo,
        kernels,
      )
      _add_record(
        results, record, peer_torch, args.peer_steps, repeats, peer_cache
      )
  print_table(results["records"])
  if args.out:
    common.write_json(args.out, results)


def _add_record(results, record, peer_torch, peer_steps, repeats, peer_cache):
  """Adds the peer's rates where asked; keeps and prints one record."""
  if peer_torch is not None and record["model"] == "AE":
    rates = peer_rates(peer_torch, record, peer_steps, repeats, peer_cache)
    record["peer_samples_per_s"] = rates
    record["ours_over_peer"] = {
      mode: record["samples_per_s"] / rate for mode, rate in rates.items()
    }
  results["records"].append(record)
  print(
    f"{record['model']} batch {record['batch_size']}"
    f" {record['groups']}x{record['seeds']} {record['kernels']}:"
    f" {record['samples_per_s'] / 1e6:.4f} M samples/s,"
    f" {record['loop_body'].get('kernels')} ops in the loop body",
    flush=True,
  )


if __name__ == "__main__":
  runtime.run(main)
