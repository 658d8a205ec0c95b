"""The run's schema: its static Setup and the typed, stacked training state.

An autoencoder is one model per group (machine type, or type and id) and
seed; a classifier is one model per seed that serves every group. Each leaf of
the state is stacked over models on its first axis. Checkpoints hold this
state; training, evaluation and the benchmarks build it from here.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aeasd_jax.training import fused
from aeasd_jax.models import autoencoders
from aeasd_jax.models import registry
from aeasd_jax.scoring import reconstruction
from aeasd_jax.data import window_data


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the compiled programs close over: static shapes and choices."""

  build: Callable  # rngs -> network
  graphdef: Any
  optimizer: Any
  task: str  # registry.RECONSTRUCTION or registry.CLASSIFICATION.
  interpolate: bool
  frames_per_window: int  # Frames per example: a window, or a whole clip.
  batch_size: int
  beta: float
  kl_reduction: str
  # The groups models train on: the scored groups (autoencoders), or one
  # group of every clip, "all" (classifiers).
  train_group_names: tuple
  group_of_model: np.ndarray  # [models] training group row of each model.
  models_of_group: tuple  # Per scored group, the rows of its seeds' models.
  class_names: tuple  # A classifier's classes in label order; else ().
  model_names: tuple  # "fan/seed0", ... in model order.
  val_chunk: int  # Validation examples per model per step.
  mesh: jax.sharding.Mesh
  loss_dtype: Any  # float32; float64 when the model computes in float64.
  kernels: str  # "xla" or one of fused.FUSED_PATHS (fused.resolve_kernels).
  learning_rate: float  # Adam's, for the fused step's flat update.
  adam_eps: float
  # Epoch (from 0) -> factor of the learning rate; None: constant.
  rate_factor: Callable = None


CLASSIFIER_GROUP = "all"


def make_setup(config, group_names, mesh, class_names=()):
  """The static description of a run, from its config, groups and mesh.

  Args:
    config: the run's config.
    group_names: the scored groups, in order.
    mesh: the device mesh.
    class_names: a classifier's classes (data/labels.py), in label order.
  """
  build = functools.partial(
    registry.build, config, num_classes=len(class_names)
  )
  graphdef, _, _ = nnx.split(
    nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param, nnx.BatchStat
  )
  num_seeds = config.train.num_seeds
  task = registry.spec(config).task
  if task == registry.CLASSIFICATION:
    train_groups = (CLASSIFIER_GROUP,)
    models_of_group = (tuple(range(num_seeds)),) * len(group_names)
  else:
    train_groups = tuple(group_names)
    models_of_group = tuple(
      tuple(range(g * num_seeds, (g + 1) * num_seeds))
      for g in range(len(group_names))
    )
  return Setup(
    build=build,
    graphdef=graphdef,
    optimizer=optax.adam(config.train.learning_rate, eps=config.train.adam_eps),
    task=task,
    interpolate=registry.interpolates(config),
    frames_per_window=registry.example_frames(config),
    batch_size=config.train.batch_size,
    beta=config.model.beta,
    kl_reduction=config.model.kl_reduction,
    train_group_names=train_groups,
    group_of_model=np.repeat(np.arange(len(train_groups)), num_seeds),
    models_of_group=models_of_group,
    class_names=tuple(class_names),
    model_names=tuple(
      f"{g}/seed{s}" for g in train_groups for s in range(num_seeds)
    ),
    val_chunk=reconstruction.bucket(
      config.score.batch_clips
      if task == registry.CLASSIFICATION
      else config.score.batch_windows,
      mesh.devices.size,
    ),
    mesh=mesh,
    loss_dtype=autoencoders.wide_dtype(config.model.compute_dtype),
    kernels=fused.resolve_kernels(config),
    learning_rate=config.train.learning_rate,
    adam_eps=config.train.adam_eps,
    rate_factor=_rate_factor(config.train),
  )


def _rate_factor(train):
  """STgram-MFN's schedule as its code steps it, or None for a constant rate.

  torch's CosineAnnealingLR(T_max=epochs, eta_min=final * rate), stepped
  after every epoch e >= start (e from 0): epoch e trains at step
  k = max(0, e - start) of the cosine.
  """
  if train.lr_schedule == "constant":
    return None
  start, final, total = (
    train.cosine_start_epoch,
    train.cosine_final,
    train.epochs,
  )

  def factor(epoch):
    k = jnp.maximum(epoch - start, 0).astype(jnp.float32)
    return final + (1 - final) * (1 + jnp.cos(jnp.pi * k / total)) / 2

  return factor


def model_keys(seed, group_names, num_seeds):
  """[models, 2] uint32 keys; a model's key depends on its group and seed only.

  So a group trains identically whether or not other groups train beside it.
  """
  root = jax.random.key(seed)
  keys = [
    jax.random.fold_in(jax.random.fold_in(root, window_data.stable_hash(g)), s)
    for g in group_names
    for s in range(num_seeds)
  ]
  return jax.random.key_data(jnp.stack(keys))


class Best(NamedTuple):
  """The best weights so far by the selection metric (lower is better)."""

  params: Any
  batch_stats: Any
  metric: jax.Array  # [models]; +inf until a model has a finite metric.
  epoch: jax.Array  # [models] the epoch the weights are from.


class TrainState(NamedTuple):
  """Everything a run resumes from, stacked over autoencoders."""

  params: Any
  batch_stats: Any
  opt_state: Any
  best: Best
  epoch: jax.Array  # Epochs completed.
  keys: jax.Array  # [models, 2] uint32 key data of each model.


def init_state(setup, keys):
  """The stacked training state: one model per row of `keys`."""

  def init_one(key):
    model = setup.build(nnx.Rngs(jax.random.wrap_key_data(key)))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params = nnx.to_pure_dict(params)
    batch_stats = nnx.to_pure_dict(batch_stats)
    return params, batch_stats, setup.optimizer.init(params)

  params, batch_stats, opt_state = jax.vmap(init_one)(keys)
  num_models = keys.shape[0]
  return TrainState(
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    best=Best(
      params=params,
      batch_stats=batch_stats,
      metric=jnp.full((num_models,), jnp.inf, jnp.float32),
      epoch=jnp.zeros((num_models,), jnp.int32),
    ),
    epoch=jnp.zeros((), jnp.int32),
    keys=keys,
  )


def abstract_state(setup, keys, sharding):
  """The state's shapes and dtypes, placed by `sharding`, without computing."""
  return with_sharding(
    jax.eval_shape(functools.partial(init_state, setup), keys), sharding
  )


def with_sharding(abstract, sharding):
  """`abstract`'s ShapeDtypeStructs, each placed by `sharding`."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    abstract,
  )
