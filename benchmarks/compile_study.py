"""Compile times of the epoch program, one setting changed at a time.

Usage: python benchmarks/compile_study.py [--quick] [--repeats=N] [--out=JSON]
"""

import argparse
import functools
import math
import pathlib
import statistics
import sys
import time

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

# configs/ and benchmarks/ sit beside the package, not inside it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax.training import config_check
from aeasd_jax import runtime
from aeasd_jax.scoring import reconstruction
from aeasd_jax.training import state as state_lib
from aeasd_jax.training import steps
from aeasd_jax.training import trainer as trainer_lib
from benchmarks import common
from configs import vidnn
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = {**common.CONFIGS, "VIDNN": vidnn}

# One setting changes at a time from the base.
BASE = {
  "model": "AE",
  "groups": 3,
  "seeds": 1,
  "depth": 4,
  "steps": 14,
  "batch": 512,
}
STUDY = (
  [
    ("models", {"groups": g, "seeds": s})
    for g, s in ((1, 1), (3, 1), (6, 1), (6, 4))
  ]
  + [("model", {"model": m}) for m in ("IDNN", "VAE", "VIDNN")]
  + [("depth", {"depth": d}) for d in (1, 2, 8)]
  + [("steps", {"steps": s}) for s in (2, 200)]
  + [("batch", {"batch": b, "steps": 2}) for b in (512, 39552)]
)


def study_config(setting):
  config = CONFIGS[setting["model"]].get_config()
  config.model.depth = setting["depth"]
  config.train.batch_size = setting["batch"]
  config.train.num_seeds = setting["seeds"]
  config_check.check_config(config)
  return config


def study_windows(setting, config, cache):
  """Host windows giving exactly setting["steps"] steps per epoch."""
  per_clip = common.windows_per_clip(config.model.frames)
  clips = math.ceil(setting["steps"] * setting["batch"] / per_clip)
  key = (setting["groups"], clips, config.model.frames)
  if key not in cache:
    cache[key] = common.synthetic_windows(
      setting["groups"], clips, 1, config.model.frames
    )
  return cache[key]


def time_lower_compile(fn, *args):
  """Seconds to trace and lower fn(*args) and to compile it, and both programs.

  Returns:
    (lower_s, compile_s, compile_cpu_s, lowered, compiled); compile_cpu_s is
    this process's CPU time, which other jobs on the machine barely move.
  """
  start = time.perf_counter()
  lowered = fn.lower(*args)
  middle, middle_cpu = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  compile_cpu_s = time.process_time() - middle_cpu
  return (
    middle - start,
    time.perf_counter() - middle,
    compile_cpu_s,
    lowered,
    compiled,
  )


def program_size(lowered, compiled):
  """StableHLO lines; instructions and fusions of the optimised HLO."""
  optimised = compiled.as_text() or ""
  return {
    "stablehlo_lines": len(lowered.as_text().splitlines()),
    "hlo_instructions": sum(" = " in line for line in optimised.splitlines()),
    # Fusion instructions: the kernels XLA generates code for.
    "fusions": optimised.count(" fusion("),
  }


def study_one(setting, cache):
  """Compile times of one setting's epoch program, nothing served cached."""
  config = study_config(setting)
  host = study_windows(setting, config, cache)
  group_names = [f"group{g}" for g in range(setting["groups"])]
  # Drops the in-memory caches too, so tracing is timed in full each time.
  jax.clear_caches()
  trainer = trainer_lib.Trainer(config, group_names, host)
  state = trainer.abstract_state()
  load = common.load_average()
  lower_s, compile_s, compile_cpu_s, lowered, compiled = time_lower_compile(
    trainer.epoch_fn, state, trainer.windows
  )
  num_steps = int((host.train_counts // setting["batch"]).max())
  return {
    "lower_s": lower_s,
    "compile_s": compile_s,
    "compile_cpu_s": compile_cpu_s,
    "load": load,
    "steps": num_steps,
    "models": setting["groups"] * setting["seeds"],
    **program_size(lowered, compiled),
  }


def _forward_backward(setup, params, batch_stats, window, key):
  """train_step's loss gradient without the optimizer and the checks."""
  return jax.grad(steps.loss, 1, has_aux=True)(
    setup, params, batch_stats, window, key
  )


def _adam(setup, params, opt_state, grads):
  updates, opt_state = setup.optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _adam_ravelled(setup, params, opt_state, grads):
  """Adam on one flat vector, flattening and splitting the tree each call."""
  flat_params, unravel = ravel_pytree(params)
  flat_grads, _ = ravel_pytree(grads)
  updates, opt_state = setup.optimizer.update(
    flat_grads, opt_state, flat_params
  )
  return unravel(optax.apply_updates(flat_params, updates)), opt_state


def study_parts(cache):
  """The base setting's programs, and pieces of its step, one by one."""
  setting = dict(BASE)
  config = study_config(setting)
  host = study_windows(setting, config, cache)
  num_models = setting["groups"]
  jax.clear_caches()
  trainer = trainer_lib.Trainer(
    config, [f"group{g}" for g in range(num_models)], host
  )
  setup = trainer.setup
  state = trainer.abstract_state()
  totals = state_lib.with_sharding(
    jax.eval_shape(
      functools.partial(steps.empty_totals, num_models, setup.loss_dtype)
    ),
    trainer.replicated,
  )
  window = jax.ShapeDtypeStruct(
    (num_models, setting["batch"], config.model.frames, common.N_MELS),
    np.float32,
  )
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), num_models))
  size = sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(state.params))
  flat = jax.ShapeDtypeStruct((num_models, size), np.float32)
  flat_opt = jax.eval_shape(jax.vmap(setup.optimizer.init), flat)
  adam = jax.vmap(functools.partial(_adam, setup))
  # Scoring as evaluate.py calls it on the synthetic test sets: 128 clips
  # per model of 59 windows (2 s clips) padded to 64, 128 clips per step.
  clips = jax.ShapeDtypeStruct((num_models, 128), np.int32)
  scores = functools.partial(
    reconstruction.clip_scores,
    frames_per_window=config.model.frames,
    interpolate=False,
    max_windows=64,
    clips_per_step=128,
    pooling="mean",
  )
  parts = {
    "epoch (train_pass + finish_epoch)": (
      trainer.epoch_fn,
      state,
      trainer.windows,
    ),
    "train_pass (shuffle + training scan)": (
      trainer.pass_fn,
      state,
      totals,
      trainer.windows,
      np.int32(0),
    ),
    "finish_epoch (validation scan)": (
      trainer.finish_fn,
      state,
      totals,
      trainer.windows,
    ),
    "keep_best": (
      trainer.keep_best_fn,
      state,
      jax.ShapeDtypeStruct((num_models,), np.float32),
    ),
    "init_state": (trainer.init_fn, trainer.keys),
    "clip_scores (evaluate)": (
      jax.jit(
        lambda p, b, f, s, c: scores(
          setup.graphdef, p, b, f, s, c, np.float32(0.99)
        )
      ),
      state.params,
      state.batch_stats,
      jax.ShapeDtypeStruct((6804, common.N_MELS), np.float32),
      clips,
      clips,
    ),
    "train_step (one vmapped step, no scan)": (
      jax.jit(jax.vmap(functools.partial(steps.train_step, setup))),
      state.params,
      state.batch_stats,
      state.opt_state,
      window,
      keys,
    ),
    "forward + backward only": (
      jax.jit(jax.vmap(functools.partial(_forward_backward, setup))),
      state.params,
      state.batch_stats,
      window,
      keys,
    ),
    "Adam update, per leaf (as the library)": (
      jax.jit(adam),
      state.params,
      state.opt_state,
      state.params,
    ),
    "Adam update, one flat vector per model": (
      jax.jit(adam),
      flat,
      flat_opt,
      flat,
    ),
    # What a drop-in fused Adam would compile: the tree is still the carry.
    "Adam update, flat, tree ravelled each step": (
      jax.jit(jax.vmap(functools.partial(_adam_ravelled, setup))),
      state.params,
      flat_opt,
      state.params,
    ),
  }
  records = {}
  for name, (fn, *args) in parts.items():
    jax.clear_caches()
    load = common.load_average()
    lower_s, compile_s, compile_cpu_s, lowered, compiled = time_lower_compile(
      fn, *args
    )
    records[name] = {
      "lower_s": lower_s,
      "compile_s": compile_s,
      "compile_cpu_s": compile_cpu_s,
      "load": load,
      **program_size(lowered, compiled),
    }
  return records


def compile_study(args):
  """Epoch-program compile times, varying one setting at a time."""
  # Nothing may come from the persistent cache; the in-memory ones are
  # cleared before each compile.
  jax.config.update("jax_compilation_cache_dir", None)
  repeats = args.repeats or (1 if args.quick else 2)
  cache, results = {}, []
  settings = [(axis, {**BASE, **change}) for axis, change in STUDY]
  # Round-robin, so a change in the machine's load hits every setting alike.
  for repeat in range(repeats):
    for i, (axis, setting) in enumerate(settings):
      record = study_one(setting, cache)
      if repeat == 0:
        results.append(
          {
            "axis": axis,
            **setting,
            "compile_s_all": [],
            "compile_cpu_s_all": [],
            "lower_s_all": [],
            "load_all": [],
            "steps": record["steps"],
            "models": record["models"],
            "stablehlo_lines": record["stablehlo_lines"],
            "hlo_instructions": record["hlo_instructions"],
            "fusions": record["fusions"],
          }
        )
      results[i]["compile_s_all"].append(record["compile_s"])
      results[i]["compile_cpu_s_all"].append(record["compile_cpu_s"])
      results[i]["lower_s_all"].append(record["lower_s"])
      results[i]["load_all"].append(record["load"])
      print(
        f"{axis:<7} {setting['model']:<5} models {record['models']:>2}"
        f" depth {setting['depth']} steps {record['steps']:>3}"
        f" batch {setting['batch']:>5}: lower {record['lower_s']:.2f} s"
        f" compile {record['compile_s']:.2f} s"
        f" ({record['compile_cpu_s']:.2f} s CPU)  load {record['load']}",
        flush=True,
      )
  for r in results:
    r["compile_s"] = statistics.median(r["compile_s_all"])
    r["compile_cpu_s"] = statistics.median(r["compile_cpu_s_all"])
    r["lower_s"] = statistics.median(r["lower_s_all"])
  parts = study_parts(cache)
  return {"repeats": repeats, "base": BASE, "records": results, "parts": parts}


def print_study(result):
  print(
    f"\n{'axis':<7} {'model':<5} {'models':>6} {'depth':>5} {'steps':>5}"
    f" {'batch':>6} {'lower s':>8} {'compile s':>9} {'CPU s':>6}"
    f" {'HLO instr':>9} {'fusions':>7} {'StableHLO':>9}  all compile s"
  )
  for r in result["records"]:
    print(
      f"{r['axis']:<7} {r['model']:<5} {r['models']:>6} {r['depth']:>5}"
      f" {r['steps']:>5} {r['batch']:>6} {r['lower_s']:>8.2f}"
      f" {r['compile_s']:>9.2f} {r['compile_cpu_s']:>6.2f}"
      f" {r['hlo_instructions']:>9}"
      f" {r['fusions']:>7} {r['stablehlo_lines']:>9}  "
      + " ".join(f"{s:.2f}" for s in r["compile_s_all"])
    )
  print("\nparts of the base setting (AE, 3 models, depth 4, 14 steps):")
  for name, r in result["parts"].items():
    print(
      f"  {name:<42} lower {r['lower_s']:.2f} s  compile"
      f" {r['compile_s']:.2f} s ({r['compile_cpu_s']:.2f} s CPU)"
      f"  HLO instr {r['hlo_instructions']:>5}"
      f"  fusions {r['fusions']:>4}  load {r['load']}"
    )


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="one repeat instead of 2"
  )
  parser.add_argument(
    "--repeats",
    type=common.positive_int,
    help="compiles per setting; the median counts; default 2, 1 with --quick",
  )
  parser.add_argument("--out", help="write the JSON results here")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  header = common.header()
  result = compile_study(args)
  print_study(result)
  if args.out:
    common.write_json(args.out, {"header": header, **result})


if __name__ == "__main__":
  runtime.run(main)
