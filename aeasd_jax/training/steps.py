"""The pure, jit-able training code: the loss, the step, the one-scan epoch.

Every function here is state, data -> state, metrics with no side effects;
the trainer jits them once, vmapped over models and sharded over the mesh.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aeasd_jax.training import fused
from aeasd_jax.models import registry
from aeasd_jax.scoring import classifier
from aeasd_jax.scoring import reconstruction
from aeasd_jax.data import window_data


def loss(setup, params, batch_stats, example, key):
  """One model's training loss on a batch of examples; a pure function.

  Autoencoders: the mean squared reconstruction error of the windows plus
  beta times the KL term (zero for AE and IDNN). Classifiers: the
  cross-entropy of the ArcFace logits of (clip frames, labels, waveforms).
  Training differentiates it; the benchmarks time it.

  Returns:
    (loss, batch_stats)
  """
  model = nnx.merge(setup.graphdef, params, batch_stats)
  if setup.task == registry.CLASSIFICATION:
    frames, labels, wave = example
    logits, _ = model(wave, frames, labels, train=True)
    # The cross-entropy is each clip's logprob score.
    value = jnp.mean(
      classifier.own_class_nll(logits.astype(setup.loss_dtype), labels)
    )
  else:
    x, y = window_data.split_window(example, setup.interpolate)
    reconstructed, kl = model(x, train=True, key=key)
    mse = jnp.mean((reconstructed - y) ** 2)
    kl = jnp.sum(kl) if setup.kl_reduction == "sum" else jnp.mean(kl)
    value = mse + setup.beta * kl
  return value, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def train_step(setup, params, batch_stats, opt_state, example, key, rate=None):
  """One Adam step of one model on a batch of examples: a pure function.

  `rate`, when given, scales Adam's update: the learning rate's factor of
  the epoch (Adam's step is linear in its rate).
  """
  (value, batch_stats), grads = jax.value_and_grad(loss, 1, has_aux=True)(
    setup, params, batch_stats, example, key
  )
  updates, opt_state = setup.optimizer.update(grads, opt_state, params)
  if rate is not None:
    updates = jax.tree.map(lambda u: (u * rate).astype(u.dtype), updates)
  params = optax.apply_updates(params, updates)
  # A non-finite gradient makes Adam's update, and so the parameters,
  # non-finite for good; finish_epoch checks them once instead of reducing
  # every gradient at every step.
  return (
    params,
    batch_stats,
    opt_state,
    {"loss": value, "finite": jnp.isfinite(value)},
  )


def _shuffled_starts(key, starts, count):
  """The valid entries of `starts` in random order, padding moved last."""
  noise = jax.random.uniform(key, starts.shape)
  noise = jnp.where(jnp.arange(starts.shape[0]) < count, noise, 2.0)
  return starts[jnp.argsort(noise)]


def train_pass(setup, state, totals, windows, part):
  """Every model's steps over the training windows of one WindowData.

  A single lax.scan over the batches. Each model draws a fresh permutation of
  its group's (clip, start frame) positions; the remainder smaller than a
  batch is skipped, and a group with fewer batches than the largest takes
  masked no-op steps, so it trains exactly its own epochs.

  Args:
    setup: the run's Setup.
    state: the training state; its epoch is not advanced here.
    totals: running per-model sums (loss, steps, finite) of this epoch.
    windows: the WindowData to train on (all of it, or a streamed chunk).
    part: which chunk of the epoch this is (0 when resident), so that every
      chunk draws its own permutation.

  Returns:
    (state, totals)
  """
  keys = jax.random.wrap_key_data(state.keys)
  fold = jax.vmap(jax.random.fold_in, (0, None))
  pass_keys = fold(fold(keys, state.epoch), part)
  shuffle_keys, step_keys = fold(pass_keys, 0), fold(pass_keys, 1)
  group = jnp.asarray(setup.group_of_model)
  starts = windows.train_starts[group]
  counts = windows.train_counts[group]
  order = jax.vmap(_shuffled_starts)(shuffle_keys, starts, counts)
  batch = setup.batch_size
  num_steps = starts.shape[1] // batch
  order = order[:, : num_steps * batch].reshape(-1, num_steps, batch)
  order = jax.lax.with_sharding_constraint(
    order.swapaxes(0, 1), NamedSharding(setup.mesh, P(None, None, "data"))
  )
  active = jnp.arange(num_steps)[:, None] < (counts // batch)[None, :]
  rate = None if setup.rate_factor is None else setup.rate_factor(state.epoch)

  def body(carry, xs):
    params, batch_stats, opt_state = carry
    batch_starts, step_active, step = xs
    window = window_data.gather_examples(
      windows, batch_starts, setup.frames_per_window
    )
    keys = fold(step_keys, step)
    if setup.kernels in fused.FUSED_PATHS:
      # Masks inactive models inside its flat Adam update.
      new = jax.vmap(functools.partial(fused.train_step, setup))(
        params, batch_stats, opt_state, window, keys, step_active
      )
      return new[:3], new[3]
    new = jax.vmap(functools.partial(train_step, setup, rate=rate))(
      params, batch_stats, opt_state, window, keys
    )
    new_carry, metrics = new[:3], new[3]
    return per_model_where(step_active, new_carry, carry), metrics

  carry = (state.params, state.batch_stats, state.opt_state)
  (params, batch_stats, opt_state), metrics = jax.lax.scan(
    body, carry, (order, active, jnp.arange(num_steps))
  )
  totals = {
    "loss": totals["loss"] + jnp.sum(jnp.where(active, metrics["loss"], 0), 0),
    "steps": totals["steps"] + jnp.sum(active, 0, dtype=jnp.int32),
    "finite": totals["finite"] & jnp.all(metrics["finite"] | ~active, 0),
  }
  state = state._replace(
    params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return state, totals


def empty_totals(num_models, loss_dtype=jnp.float32):
  return {
    "loss": jnp.zeros(num_models, loss_dtype),
    "steps": jnp.zeros(num_models, jnp.int32),
    "finite": jnp.ones(num_models, bool),
  }


def finish_epoch(setup, state, totals, val_windows):
  """Advances the epoch and computes its metrics, validation included.

  Returns:
    (state, metrics) with per-model train_loss, val_loss and finite.
  """
  val_loss = validation_loss(
    setup, state.params, state.batch_stats, val_windows
  )
  state = state._replace(epoch=state.epoch + 1)
  return state, {
    "train_loss": totals["loss"] / jnp.maximum(totals["steps"], 1),
    "val_loss": val_loss,
    "finite": totals["finite"] & _all_finite((state.params, state.batch_stats)),
    "steps": totals["steps"],
  }


def _all_finite(stacked):
  """[models] whether every value of each model's slice is finite."""
  per_leaf = [
    jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), 1)
    for x in jax.tree.leaves(stacked)
  ]
  return functools.reduce(jnp.logical_and, per_leaf)


def run_epoch(setup, state, windows):
  """One epoch on device-resident windows: one program, one scan."""
  totals = empty_totals(len(setup.model_names), setup.loss_dtype)
  state, totals = train_pass(setup, state, totals, windows, 0)
  return finish_epoch(setup, state, totals, windows)


def validation_loss(setup, params, batch_stats, windows):
  """[models] mean per-example error over each group's held-out examples.

  Autoencoders: the error the anomaly score averages, so selecting on it
  selects the model that best reconstructs unseen normal sound.
  Classifiers: the cross-entropy of held-out clips, which is also their
  logprob score.
  """
  group = jnp.asarray(setup.group_of_model)
  starts, counts = windows.val_starts[group], windows.val_counts[group]
  # A small validation set is not padded up to a whole scoring chunk.
  chunk = min(
    setup.val_chunk,
    reconstruction.bucket(starts.shape[1], setup.mesh.devices.size),
  )
  num_chunks = -(-starts.shape[1] // chunk)
  starts = jnp.pad(starts, ((0, 0), (0, num_chunks * chunk - starts.shape[1])))
  starts = starts.reshape(-1, num_chunks, chunk).swapaxes(0, 1)
  starts = jax.lax.with_sharding_constraint(
    starts, NamedSharding(setup.mesh, P(None, None, "data"))
  )
  position = jnp.arange(num_chunks * chunk).reshape(num_chunks, 1, chunk)

  def body(total, xs):
    chunk_starts, chunk_position = xs
    example = window_data.gather_examples(
      windows, chunk_starts, setup.frames_per_window
    )
    errors = jax.vmap(functools.partial(example_errors, setup), (0, 0, 0))(
      params, batch_stats, example
    )
    mask = chunk_position < counts[:, None]
    return total + jnp.sum(jnp.where(mask, errors, 0.0), -1), None

  total, _ = jax.lax.scan(
    body, jnp.zeros(counts.shape, setup.loss_dtype), (starts, position)
  )
  return jnp.where(counts > 0, total / jnp.maximum(counts, 1), jnp.nan)


def example_errors(setup, params, batch_stats, example):
  """One model's per-example error in eval mode: [batch]."""
  if setup.task == registry.CLASSIFICATION:
    return classifier.clip_outputs(
      setup.graphdef, params, batch_stats, example
    )[0]
  return reconstruction.vector_errors(
    setup.graphdef, params, batch_stats, example, setup.interpolate
  )


def keep_best(state, metric):
  """Copies each model's weights into state.best where `metric` improved.

  A model that has had no finite metric yet (no validation clips, a NaN
  validation loss, or no dev AUC check so far) has its latest weights as
  "best", never its untrained initialisation; its stored metric stays +inf so
  that the first real measurement still selects.
  """
  best = state.best
  improved = metric < best.metric
  take = improved | ~jnp.isfinite(best.metric)
  return state._replace(
    best=best._replace(
      params=per_model_where(take, state.params, best.params),
      batch_stats=per_model_where(take, state.batch_stats, best.batch_stats),
      metric=jnp.where(improved, metric, best.metric),
      epoch=jnp.where(take, state.epoch, best.epoch),
    )
  )


def per_model_where(mask, new, old):
  """Takes each model's slice of `new` where mask [models] is set, else `old`'s.

  Both trees are stacked over models on their first axis.
  """
  return jax.tree.map(
    lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
    new,
    old,
  )
