"""What one Pallas training step holds when lowered for CUDA, without a GPU.

Usage: python benchmarks/fused_lowering.py [--models=6] [--batch_size=512]

Lowers the vmapped config.train.kernels="pallas" step of each AE-family
network for the "cuda" platform and counts its Pallas (Triton) launches and
the other StableHLO ops, before XLA's GPU passes fuse them: a structural
count, not a timing. JAX 0.10 lowers Triton kernels without a GPU; from 0.11
the lowering compiles them and needs one (train_speed.py then counts the
compiled loop body's kernels).
"""

import argparse
import collections
import dataclasses
import functools
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax.training import fused
from aeasd_jax.training import state as state_lib
from benchmarks import common
# pylint: enable=g-import-not-at-top,wrong-import-position


def count_ops(model, models, batch_size):
  """{op: count} of one lowered Pallas step of `models` stacked models."""
  config = common.CONFIGS[model].get_config()
  config.train.batch_size = batch_size
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  # fused.resolve_kernels refuses "pallas" without a GPU; lowering does not
  # need one, so the setup is made for jax_fused and switched.
  config.train.kernels = "jax_fused"
  setup = dataclasses.replace(
    state_lib.make_setup(config, ["group"], mesh), kernels="pallas"
  )
  state = jax.eval_shape(
    functools.partial(state_lib.init_state, setup),
    jnp.zeros((models, 2), jnp.uint32),
  )
  window = jax.ShapeDtypeStruct(
    (models, batch_size, config.model.frames, common.N_MELS), jnp.float32
  )
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), models))
  step = jax.vmap(functools.partial(fused.train_step, setup))
  text = (
    jax.jit(step)
    .trace(
      state.params,
      state.batch_stats,
      state.opt_state,
      window,
      keys,
      jnp.ones(models, bool),
    )
    .lower(lowering_platforms=("cuda",))
    .as_text()
  )
  ops = collections.Counter(re.findall(r"= \"?stablehlo\.([a-z_]+)", text))
  ops["pallas_triton"] = text.count("__gpu$xla.gpu.triton")
  ops["custom_call"] -= ops["pallas_triton"]
  return ops


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", type=common.positive_int, default=6)
  parser.add_argument("--batch_size", type=common.positive_int, default=512)
  args = parser.parse_args(argv)
  print(
    f"jax {jax.__version__}, lowered for cuda on {jax.default_backend()};"
    f" {args.models} models, batch {args.batch_size}"
  )
  for model in ("AE", "IDNN"):
    ops = count_ops(model, args.models, args.batch_size)
    print(
      f"{model}: {ops['pallas_triton']} Pallas launches,"
      f" {ops['dot_general']} dot_general, {ops['reduce']} reduce,"
      f" {ops['custom_call']} other custom calls,"
      f" {sum(ops.values())} StableHLO ops in all"
    )


if __name__ == "__main__":
  main()
