"""Time to first result: cold and warm train.py and evaluate.py, end to end.

Usage: python benchmarks/time_to_first_result.py [--quick] [--out=ttfr.json]
       python benchmarks/time_to_first_result.py --compile_study [--out=...]
"""

import argparse
import functools
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

# configs/ and benchmarks/ sit beside the package, not inside it.
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax import config_check
from aeasd_jax import data
from aeasd_jax import metric_log
from aeasd_jax import runtime
from aeasd_jax import scoring
from aeasd_jax import train
from benchmarks import common
from benchmarks import train_speed
from configs import vidnn
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = {**train_speed.CONFIGS, "VIDNN": vidnn}
# The H100 targets; on a CPU they are only a yardstick.
TARGETS = {"cold_compile_s": 10.0, "warm_start_to_first_epoch_s": 2.0,
           "evaluate_warm_s": 5.0}

# Lines JAX logs with JAX_LOG_COMPILES=1, in the order it logs them for one
# program: compiling, an optional persistent-cache hit, then finished.
_COMPILING = re.compile(r"Compiling (\S+) with global shapes and types (.*)")
_CACHE_HIT = re.compile(r"Persistent compilation cache hit for '(\S+)'")
_FINISHED = re.compile(r"Finished XLA compilation of (\S+) in ([\d.e-]+) sec")
_TRACED = re.compile(r"Finished tracing \S+ for jit in ([\d.e-]+) sec")
_LOWERED = re.compile(
    r"Finished jaxpr to MLIR module conversion \S+ in ([\d.e-]+) sec")
_PHASE = re.compile(r"(\w+) ([\d.]+)s(?: \((\w+)\))?")


def load_average():
  return [round(x, 2) for x in os.getloadavg()]


def run_command(argv, env):
  """Runs argv to completion; times it and every output line it prints.

  stdout and stderr share one pipe, read as lines arrive, so a line's time is
  when the child wrote it (the project's log handler flushes every record).

  Returns:
    {"wall_s", "lines": [(seconds since start, text)], "load_before",
     "load_after"}
  """
  load_before = load_average()
  start = time.perf_counter()
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  # Text mode splits on "\r" too, so progress lines arrive one by one.
  for line in proc.stdout:
    lines.append((time.perf_counter() - start, line.rstrip("\n")))
  proc.wait()
  wall = time.perf_counter() - start
  if proc.returncode:
    tail = "\n".join(text for _, text in lines[-30:])
    raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}:"
                       f"\n{tail}")
  return {"wall_s": wall, "lines": lines, "load_before": load_before,
          "load_after": load_average()}


def parse_time_line(lines):
  """{phase: seconds} and {phase: note} from the last `time:` log line."""
  times, notes = {}, {}
  for _, text in lines:
    if "time: " in text:
      times, notes = {}, {}
      for name, seconds, note in _PHASE.findall(text.split("time: ", 1)[1]):
        times[name] = float(seconds)
        if note:
          notes[name] = note
  return times, notes


def compile_log(lines):
  """What JAX_LOG_COMPILES reported: each program compiled and its cost.

  Returns:
    {"programs": [{"name", "xla_s", "cache_hit", "shapes"}], "trace_s",
     "lower_s", "xla_s", "compiled", "cache_hits"}; trace_s and lower_s sum
    over every jit traced, cached or not.
  """
  # Programs compile on several threads at once, so their lines interleave:
  # each is matched by its name.
  programs, pending, trace_s, lower_s = [], {}, 0.0, 0.0
  for _, text in lines:
    if m := _COMPILING.search(text):
      pending[m.group(1)] = {"shapes": m.group(2)[:300], "cache_hit": False}
    elif m := _CACHE_HIT.search(text):
      hit = _plain(m.group(1))
      for name in reversed(pending):
        if _plain(name) in hit:
          pending[name]["cache_hit"] = True
          break
    elif m := _FINISHED.search(text):
      program = pending.pop(m.group(1), {"cache_hit": False})
      programs.append({**program, "name": m.group(1),
                       "xla_s": float(m.group(2))})
    elif m := _TRACED.search(text):
      trace_s += float(m.group(1))
    elif m := _LOWERED.search(text):
      lower_s += float(m.group(1))
  hits = sum(p["cache_hit"] for p in programs)
  return {"programs": programs, "trace_s": trace_s, "lower_s": lower_s,
          "xla_s": sum(p["xla_s"] for p in programs),
          "compiled": len(programs) - hits, "cache_hits": hits}


def _plain(name):
  """A program's name without punctuation: jit(f) and jit_f read the same."""
  return re.sub(r"\W|_", "", name)


def first_epoch_end(lines):
  """Seconds from the command's start to its `epoch 1/E` progress line."""
  for seconds, text in lines:
    if re.search(r"\bepoch 1/\d+ ", text):
      return seconds
  return None


def synthetic_data_s(lines):
  """Seconds spent generating the bundled dataset, between its log lines."""
  begin = [t for t, text in lines if "generating the bundled" in text]
  end = [t for t, text in lines if "using the bundled synthetic" in text]
  return end[0] - begin[0] if begin and end else None


def train_records(workdir):
  """(per-epoch records, the final timing record) of a metrics.jsonl."""
  records = metric_log.read_records(workdir)
  epochs = [r for r in records if "epoch" in r]
  timing = [r for r in records if "timing_s" in r][-1]
  return epochs, timing


def first_epoch_train_s(epochs, train_s):
  """The first epoch's share of the train phase, from the logged rates.

  Every resident epoch trains the same number of samples S, and epoch e
  logs S / t_e; so S = train_s / sum(1 / rate_e) and t_1 = S / rate_1.
  """
  inverse = [1 / r["samples_per_s"] for r in epochs]
  return train_s / sum(inverse) * inverse[0]


def cache_entries(directory):
  if not directory.is_dir():
    return 0
  return sum(len(files) for _, _, files in os.walk(directory))


def measure(name, argv, env, jax_cache, workdir=None):
  """Runs one command; its JSON record."""
  before = cache_entries(jax_cache)
  result = run_command(argv, env)
  record = {"run": name, "command": shlex.join(argv),
            "wall_s": result["wall_s"],
            "load_before": result["load_before"],
            "load_after": result["load_after"],
            "cache_entries_added": cache_entries(jax_cache) - before}
  if any("Finished XLA compilation" in t for _, t in result["lines"]):
    record["compile_log"] = compile_log(result["lines"])
  times, notes = parse_time_line(result["lines"])
  if workdir is not None:
    epochs, timing = train_records(workdir)
    times, notes = timing["timing_s"], {"compile": timing["compile"]}
    epoch1 = first_epoch_train_s(epochs, times["train"])
    record["epochs"] = len(epochs)
    # Part of the features phase, on a machine's first run only.
    record["synthetic_data_s"] = synthetic_data_s(result["lines"])
    record["first_epoch_train_s"] = epoch1
    record["first_epoch_end_s"] = first_epoch_end(result["lines"])
    # Cross-check without timestamps: everything after epoch 1 is the other
    # epochs' training, checkpoints and thresholds (plus small per-epoch
    # bookkeeping and the exit, so this reads a little high).
    record["first_epoch_end_derived_s"] = (
        result["wall_s"] - (times["train"] - epoch1)
        - times.get("checkpoint", 0) - times.get("thresholds", 0))
  record["timing_s"] = times
  record["notes"] = notes
  # Interpreter start, imports, flag parsing, JAX's backend start and exit:
  # the wall time the library's own timer cannot see.
  record["outside_timer_s"] = (result["wall_s"] - times["total"]
                               if "total" in times else None)
  print(f"{name}: {result['wall_s']:.2f} s wall, load {record['load_before']}",
        flush=True)
  return record


def time_to_first_result(args):
  """An import-only run, then the four runs in a fresh cache folder."""
  work = pathlib.Path(tempfile.mkdtemp(prefix="ttfr_"))
  cache_dir, jax_cache = work / "cache", work / "cache" / "jax"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  # Counts every program compiled and every persistent-cache hit; the few
  # dozen log lines cost little beside the compiles they report.
  if args.log_compiles:
    env["JAX_LOG_COMPILES"] = "1"
  python = sys.executable
  epochs = args.epochs or (5 if args.quick else 100)
  train_argv = [python, "train.py", f"--config={args.config}",
                f"--config.train.epochs={epochs}",
                f"--config.data.cache_dir={cache_dir}"]
  try:
    records = [measure(
        "import only", [python, "-c", "import jax; from aeasd_jax import"
                        " evaluation, train; jax.devices()"], env, jax_cache)]
    for name, workdir in (("train cold", work / "A"),
                          ("train warm", work / "B")):
      records.append(measure(name, train_argv + [f"--workdir={workdir}"],
                             env, jax_cache, workdir))
    for name, workdir in (("evaluate cold", work / "A"),
                          ("evaluate warm", work / "B")):
      records.append(measure(
          name, [python, "evaluate.py", f"--workdir={workdir}"], env,
          jax_cache))
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)
  return {"epochs": epochs, "config": args.config,
          "log_compiles": args.log_compiles, "records": records,
          "targets": check_targets(records)}


def check_targets(records):
  """The H100 targets applied to these (CPU) figures."""
  by_run = {r["run"]: r for r in records}
  figures = {
      "cold_compile_s": by_run["train cold"]["timing_s"]["compile"],
      "warm_start_to_first_epoch_s": by_run["train warm"]["first_epoch_end_s"],
      "evaluate_warm_s": by_run["evaluate warm"]["wall_s"]}
  return {k: {"value": v, "target": TARGETS[k],
              "met": v is not None and v <= TARGETS[k]}
          for k, v in figures.items()}


def _fmt(value, width=8):
  return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def print_table(result):
  print(f"\nepochs={result['epochs']}  config={result['config']}")
  print(f"{'run':<14} {'wall s':>8} {'outside':>8} {'features':>8}"
        f" {'compile':>14} {'epoch1 end':>10} {'(derived)':>9} {'train':>8}"
        f" {'score':>8} {'total':>8} {'XLA progs':>10} {'hits':>5}"
        f" {'XLA s':>7}  load 1/5/15")
  for r in result["records"]:
    t, log = r["timing_s"], r.get("compile_log", {})
    compile_s = t.get("compile")
    compile_text = (f"{compile_s:.2f} ({r['notes'].get('compile', '')})"
                    if compile_s is not None else "-")
    score = t.get("score", t.get("thresholds"))
    print(f"{r['run']:<14} {_fmt(r['wall_s'])} {_fmt(r['outside_timer_s'])}"
          f" {_fmt(t.get('features'))} {compile_text:>14}"
          f" {_fmt(r.get('first_epoch_end_s'), 10)}"
          f" {_fmt(r.get('first_epoch_end_derived_s'), 9)}"
          f" {_fmt(t.get('train'))} {_fmt(score)} {_fmt(t.get('total'))}"
          f" {log.get('compiled', '-'):>10} {log.get('cache_hits', '-'):>5}"
          f" {_fmt(log.get('xla_s'), 7)}  {r['load_before']}")
  print("\nH100 targets applied to these CPU figures:")
  for name, entry in result["targets"].items():
    print(f"  {name}: {_fmt(entry['value'], 0).strip()} s"
          f" (target <= {entry['target']:g} s): "
          f"{'met' if entry['met'] else 'not met'}")


# The compile-time study: one setting changed at a time from the base.
BASE = {"model": "AE", "groups": 3, "seeds": 1, "depth": 4, "steps": 14,
        "batch": 512}
STUDY = (
    [("models", {"groups": g, "seeds": s}) for g, s in
     ((1, 1), (3, 1), (6, 1), (6, 4))]
    + [("model", {"model": m}) for m in ("IDNN", "VAE", "VIDNN")]
    + [("depth", {"depth": d}) for d in (1, 2, 8)]
    + [("steps", {"steps": s}) for s in (2, 200)]
    + [("batch", {"batch": b, "steps": 2}) for b in (512, 39552)])


def study_config(setting):
  config = CONFIGS[setting["model"]].get_config()
  config.model.depth = setting["depth"]
  config.train.batch_size = setting["batch"]
  config.train.num_seeds = setting["seeds"]
  config_check.check_config(config)
  return config


def study_windows(setting, config, cache):
  """Host windows giving exactly setting["steps"] steps per epoch."""
  per_clip = train_speed.windows_per_clip(config.model.frames)
  clips = math.ceil(setting["steps"] * setting["batch"] / per_clip)
  key = (setting["groups"], clips, config.model.frames)
  if key not in cache:
    cache[key] = train_speed.synthetic_windows(
        setting["groups"], clips, 1, config.model.frames)
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
  return (middle - start, time.perf_counter() - middle, compile_cpu_s,
          lowered, compiled)


def program_size(lowered, compiled):
  """StableHLO lines; instructions and fusions of the optimised HLO."""
  optimised = compiled.as_text() or ""
  return {"stablehlo_lines": len(lowered.as_text().splitlines()),
          "hlo_instructions": sum(" = " in line
                                  for line in optimised.splitlines()),
          # Fusion instructions: the kernels XLA generates code for.
          "fusions": optimised.count(" fusion(")}


def study_one(setting, cache):
  """Compile times of one setting's epoch program, nothing served cached."""
  config = study_config(setting)
  host = study_windows(setting, config, cache)
  group_names = [f"group{g}" for g in range(setting["groups"])]
  # Drops the in-memory caches too, so tracing is timed in full each time.
  jax.clear_caches()
  trainer = train.Trainer(config, group_names, host)
  state = trainer.abstract_state()
  load = load_average()
  lower_s, compile_s, compile_cpu_s, lowered, compiled = time_lower_compile(
      trainer.epoch_fn, state, trainer.windows)
  steps = int((host.train_counts // setting["batch"]).max())
  return {"lower_s": lower_s, "compile_s": compile_s,
          "compile_cpu_s": compile_cpu_s, "load": load,
          "steps": steps, "models": setting["groups"] * setting["seeds"],
          **program_size(lowered, compiled)}


def _forward_backward(setup, params, batch_stats, window, key):
  """train_step's loss gradient without the optimizer and the checks."""
  x, y = data.split_window(window, setup.interpolate)

  def loss_fn(params):
    model = nnx.merge(setup.graphdef, params, batch_stats)
    reconstruction, _ = model(x, train=True, key=key)
    return jnp.mean((reconstruction - y) ** 2)

  return jax.grad(loss_fn)(params)


def _adam(setup, params, opt_state, grads):
  updates, opt_state = setup.optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _adam_ravelled(setup, params, opt_state, grads):
  """Adam on one flat vector, flattening and splitting the tree each call."""
  flat_params, unravel = ravel_pytree(params)
  flat_grads, _ = ravel_pytree(grads)
  updates, opt_state = setup.optimizer.update(flat_grads, opt_state,
                                              flat_params)
  return unravel(optax.apply_updates(flat_params, updates)), opt_state


def study_parts(cache):
  """The base setting's programs, and pieces of its step, one by one."""
  setting = dict(BASE)
  config = study_config(setting)
  host = study_windows(setting, config, cache)
  num_models = setting["groups"]
  jax.clear_caches()
  trainer = train.Trainer(config, [f"group{g}" for g in range(num_models)],
                          host)
  setup = trainer.setup
  state = trainer.abstract_state()
  totals = train.abstract_with_sharding(
      jax.eval_shape(lambda: train.empty_totals(num_models)),
      trainer.replicated)
  window = jax.ShapeDtypeStruct(
      (num_models, setting["batch"], config.model.frames, 128), np.float32)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0),
                                                 num_models))
  size = sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(state["params"]))
  flat = jax.ShapeDtypeStruct((num_models, size), np.float32)
  flat_opt = jax.eval_shape(jax.vmap(setup.optimizer.init), flat)
  adam = jax.vmap(functools.partial(_adam, setup))
  # Scoring as evaluate.py calls it on the synthetic test sets: 128 clips
  # per model of 59 windows (2 s clips) padded to 64, 128 clips per step.
  clips = jax.ShapeDtypeStruct((num_models, 128), np.int32)
  scores = functools.partial(
      scoring.clip_scores, frames_per_window=config.model.frames,
      interpolate=False, max_windows=64, clips_per_step=128, pooling="mean")
  parts = {
      "epoch (train_pass + finish_epoch)": (trainer.epoch_fn, state,
                                            trainer.windows),
      "train_pass (shuffle + training scan)": (trainer.pass_fn, state, totals,
                                               trainer.windows, np.int32(0)),
      "finish_epoch (validation scan)": (trainer.finish_fn, state, totals,
                                         trainer.windows),
      "keep_best": (trainer.keep_best_fn, state,
                    jax.ShapeDtypeStruct((num_models,), np.float32)),
      "init_state": (jax.jit(functools.partial(train.init_state, setup)),
                     trainer.keys),
      "clip_scores (evaluate)": (
          jax.jit(lambda p, b, f, s, c: scores(setup.graphdef, p, b, f, s, c,
                                               np.float32(0.99))),
          state["params"], state["batch_stats"],
          jax.ShapeDtypeStruct((6804, 128), np.float32), clips, clips),
      "train_step (one vmapped step, no scan)": (
          jax.jit(jax.vmap(functools.partial(train.train_step, setup))),
          state["params"], state["batch_stats"], state["opt_state"], window,
          keys),
      "forward + backward only": (
          jax.jit(jax.vmap(functools.partial(_forward_backward, setup))),
          state["params"], state["batch_stats"], window, keys),
      "Adam update, per leaf (as the library)": (
          jax.jit(adam), state["params"], state["opt_state"],
          state["params"]),
      "Adam update, one flat vector per model": (jax.jit(adam), flat,
                                                 flat_opt, flat),
      # What a drop-in fused Adam would compile: the tree is still the carry.
      "Adam update, flat, tree ravelled each step": (
          jax.jit(jax.vmap(functools.partial(_adam_ravelled, setup))),
          state["params"], flat_opt, state["params"]),
  }
  records = {}
  for name, (fn, *args) in parts.items():
    jax.clear_caches()
    load = load_average()
    lower_s, compile_s, compile_cpu_s, lowered, compiled = (
        time_lower_compile(fn, *args))
    records[name] = {"lower_s": lower_s, "compile_s": compile_s,
                     "compile_cpu_s": compile_cpu_s, "load": load,
                     **program_size(lowered, compiled)}
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
        results.append({"axis": axis, **setting, "compile_s_all": [],
                        "compile_cpu_s_all": [], "lower_s_all": [],
                        "load_all": [],
                        "steps": record["steps"], "models": record["models"],
                        "stablehlo_lines": record["stablehlo_lines"],
                        "hlo_instructions": record["hlo_instructions"],
                        "fusions": record["fusions"]})
      results[i]["compile_s_all"].append(record["compile_s"])
      results[i]["compile_cpu_s_all"].append(record["compile_cpu_s"])
      results[i]["lower_s_all"].append(record["lower_s"])
      results[i]["load_all"].append(record["load"])
      print(f"{axis:<7} {setting['model']:<5} models {record['models']:>2}"
            f" depth {setting['depth']} steps {record['steps']:>3}"
            f" batch {setting['batch']:>5}: lower {record['lower_s']:.2f} s"
            f" compile {record['compile_s']:.2f} s"
            f" ({record['compile_cpu_s']:.2f} s CPU)  load {record['load']}",
            flush=True)
  for r in results:
    r["compile_s"] = statistics.median(r["compile_s_all"])
    r["compile_cpu_s"] = statistics.median(r["compile_cpu_s_all"])
    r["lower_s"] = statistics.median(r["lower_s_all"])
  parts = study_parts(cache)
  return {"repeats": repeats, "base": BASE, "records": results,
          "parts": parts}


def print_study(result):
  print(f"\n{'axis':<7} {'model':<5} {'models':>6} {'depth':>5} {'steps':>5}"
        f" {'batch':>6} {'lower s':>8} {'compile s':>9} {'CPU s':>6}"
        f" {'HLO instr':>9} {'fusions':>7} {'StableHLO':>9}  all compile s")
  for r in result["records"]:
    print(f"{r['axis']:<7} {r['model']:<5} {r['models']:>6} {r['depth']:>5}"
          f" {r['steps']:>5} {r['batch']:>6} {r['lower_s']:>8.2f}"
          f" {r['compile_s']:>9.2f} {r['compile_cpu_s']:>6.2f}"
          f" {r['hlo_instructions']:>9}"
          f" {r['fusions']:>7} {r['stablehlo_lines']:>9}  "
          + " ".join(f"{s:.2f}" for s in r["compile_s_all"]))
  print("\nparts of the base setting (AE, 3 models, depth 4, 14 steps):")
  for name, r in result["parts"].items():
    print(f"  {name:<42} lower {r['lower_s']:.2f} s  compile"
          f" {r['compile_s']:.2f} s ({r['compile_cpu_s']:.2f} s CPU)"
          f"  HLO instr {r['hlo_instructions']:>5}"
          f"  fusions {r['fusions']:>4}  load {r['load']}")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="5 epochs instead of 100; one repeat in the"
                      " compile study")
  parser.add_argument("--epochs", type=common.positive_int,
                      help="training epochs of both train.py runs")
  parser.add_argument("--config", default="configs/idnn.py",
                      help="the train.py config file")
  parser.add_argument("--out", help="write the JSON results here")
  parser.add_argument("--keep", action="store_true",
                      help="keep the temporary cache and workdirs")
  parser.add_argument(
      "--log_compiles", action=argparse.BooleanOptionalAction, default=True,
      help="run the commands with JAX_LOG_COMPILES=1 to count programs")
  parser.add_argument(
      "--compile_study", action="store_true",
      help="instead, time the epoch program's compile in this process while"
      " varying models, network, depth, scan length and batch")
  parser.add_argument("--repeats", type=common.positive_int,
                      help="compiles per compile-study setting; the median"
                      " counts; default 2, 1 with --quick")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  header = common.header()
  if args.compile_study:
    result = compile_study(args)
    print_study(result)
  else:
    result = time_to_first_result(args)
    print_table(result)
  if args.out:
    pathlib.Path(args.out).write_text(
        json.dumps({"header": header, **result}, indent=1) + "\n")


if __name__ == "__main__":
  runtime.run(main)
