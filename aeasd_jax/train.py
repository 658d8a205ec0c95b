"""Training: the step, the one-scan epoch, and the loop over epochs.

Every group (machine type, or type and id) times every seed is one model; all
models train together under jax.vmap, data-parallel over a device Mesh.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import queue
import signal
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aeasd_jax import checkpoint
from aeasd_jax import config_check
from aeasd_jax import data
from aeasd_jax import dataset
from aeasd_jax import metric_log
from aeasd_jax import models
from aeasd_jax import runtime
from aeasd_jax import scoring
from aeasd_jax import workdir_files
from aeasd_jax import workdir_lock
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import Interrupted

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the compiled programs close over: static shapes and choices."""
  build: Callable  # rngs -> network
  graphdef: Any
  optimizer: Any
  interpolate: bool
  frames_per_window: int
  batch_size: int
  beta: float
  kl_reduction: str
  group_of_model: np.ndarray  # [models] group row of each model.
  model_names: tuple  # "fan/seed0", ... in model order.
  val_chunk: int  # Validation windows per model per step.
  mesh: jax.sharding.Mesh
  loss_dtype: Any  # float32; float64 when the model computes in float64.


def make_setup(config, group_names, mesh):
  """The static description of a run, from its config, groups and mesh."""
  build = functools.partial(models.build, config.model)
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))),
                             nnx.Param, nnx.BatchStat)
  num_seeds = config.train.num_seeds
  return Setup(
      build=build,
      graphdef=graphdef,
      optimizer=optax.adam(config.train.learning_rate,
                           eps=config.train.adam_eps),
      interpolate=models.MODELS[config.model.name].interpolate,
      frames_per_window=config.model.frames,
      batch_size=config.train.batch_size,
      beta=config.model.beta,
      kl_reduction=config.model.kl_reduction,
      group_of_model=np.repeat(np.arange(len(group_names)), num_seeds),
      model_names=tuple(f"{g}/seed{s}" for g in group_names
                        for s in range(num_seeds)),
      val_chunk=scoring.bucket(config.score.batch_windows, mesh.devices.size),
      mesh=mesh,
      loss_dtype=models.wide_dtype(config.model.compute_dtype))


def model_keys(seed, group_names, num_seeds):
  """[models, 2] uint32 keys; a model's key depends on its group and seed only.

  So a group trains identically whether or not other groups train beside it.
  """
  root = jax.random.key(seed)
  keys = [jax.random.fold_in(jax.random.fold_in(root, data.stable_hash(g)), s)
          for g in group_names for s in range(num_seeds)]
  return jax.random.key_data(jnp.stack(keys))


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
  return {
      "params": params, "batch_stats": batch_stats, "opt_state": opt_state,
      # The best weights so far by the selection metric (lower is better).
      "best": {"params": params, "batch_stats": batch_stats,
               "metric": jnp.full((num_models,), jnp.inf, jnp.float32),
               "epoch": jnp.zeros((num_models,), jnp.int32)},
      "epoch": jnp.zeros((), jnp.int32),  # Epochs completed.
      "keys": keys,
  }


def train_step(setup, params, batch_stats, opt_state, window, key):
  """One Adam step of one model on a batch of windows: a pure function."""
  x, y = data.split_window(window, setup.interpolate)

  def loss_fn(params):
    model = nnx.merge(setup.graphdef, params, batch_stats)
    reconstruction, kl = model(x, train=True, key=key)
    mse = jnp.mean((reconstruction - y) ** 2)
    kl = jnp.sum(kl) if setup.kl_reduction == "sum" else jnp.mean(kl)
    new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return mse + setup.beta * kl, new_stats

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params)
  updates, opt_state = setup.optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  # A non-finite gradient makes Adam's update, and so the parameters,
  # non-finite for good; finish_epoch checks them once instead of reducing
  # every gradient at every step.
  return params, batch_stats, opt_state, {"loss": loss,
                                          "finite": jnp.isfinite(loss)}


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
  keys = jax.random.wrap_key_data(state["keys"])
  fold = jax.vmap(jax.random.fold_in, (0, None))
  pass_keys = fold(fold(keys, state["epoch"]), part)
  shuffle_keys, step_keys = fold(pass_keys, 0), fold(pass_keys, 1)
  group = jnp.asarray(setup.group_of_model)
  starts = windows.train_starts[group]
  counts = windows.train_counts[group]
  order = jax.vmap(_shuffled_starts)(shuffle_keys, starts, counts)
  batch = setup.batch_size
  num_steps = starts.shape[1] // batch
  order = order[:, :num_steps * batch].reshape(-1, num_steps, batch)
  order = jax.lax.with_sharding_constraint(
      order.swapaxes(0, 1), NamedSharding(setup.mesh, P(None, None, "data")))
  active = jnp.arange(num_steps)[:, None] < (counts // batch)[None, :]

  def body(carry, xs):
    params, batch_stats, opt_state = carry
    batch_starts, step_active, step = xs
    window = data.gather_windows(windows.frames, batch_starts,
                                 setup.frames_per_window)
    new = jax.vmap(functools.partial(train_step, setup))(
        params, batch_stats, opt_state, window, fold(step_keys, step))
    new_carry, metrics = new[:3], new[3]
    return per_model_where(step_active, new_carry, carry), metrics

  carry = (state["params"], state["batch_stats"], state["opt_state"])
  (params, batch_stats, opt_state), metrics = jax.lax.scan(
      body, carry, (order, active, jnp.arange(num_steps)))
  totals = {
      "loss": totals["loss"] + jnp.sum(jnp.where(active, metrics["loss"], 0), 0),
      "steps": totals["steps"] + jnp.sum(active, 0, dtype=jnp.int32),
      "finite": totals["finite"] & jnp.all(metrics["finite"] | ~active, 0)}
  state = {**state, "params": params, "batch_stats": batch_stats,
           "opt_state": opt_state}
  return state, totals


def empty_totals(num_models, loss_dtype=jnp.float32):
  return {"loss": jnp.zeros(num_models, loss_dtype),
          "steps": jnp.zeros(num_models, jnp.int32),
          "finite": jnp.ones(num_models, bool)}


def finish_epoch(setup, state, totals, val_windows):
  """Advances the epoch and computes its metrics, validation included.

  Returns:
    (state, metrics) with per-model train_loss, val_loss and finite.
  """
  val_loss = validation_loss(setup, state["params"], state["batch_stats"],
                             val_windows)
  state = {**state, "epoch": state["epoch"] + 1}
  return state, {"train_loss": totals["loss"] / jnp.maximum(totals["steps"], 1),
                 "val_loss": val_loss,
                 "finite": totals["finite"] & _all_finite(
                     (state["params"], state["batch_stats"])),
                 "steps": totals["steps"]}


def _all_finite(stacked):
  """[models] whether every value of each model's slice is finite."""
  per_leaf = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), 1)
              for x in jax.tree.leaves(stacked)]
  return functools.reduce(jnp.logical_and, per_leaf)


def run_epoch(setup, state, windows):
  """One epoch on device-resident windows: one program, one scan."""
  totals = empty_totals(len(setup.model_names), setup.loss_dtype)
  state, totals = train_pass(setup, state, totals, windows, 0)
  return finish_epoch(setup, state, totals, windows)


def validation_loss(setup, params, batch_stats, windows):
  """[models] mean per-vector error over each group's held-out windows.

  The same error the anomaly score averages, so selecting on it selects the
  model that best reconstructs unseen normal sound.
  """
  group = jnp.asarray(setup.group_of_model)
  starts, counts = windows.val_starts[group], windows.val_counts[group]
  # A small validation set is not padded up to a whole scoring chunk.
  chunk = min(setup.val_chunk,
              scoring.bucket(starts.shape[1], setup.mesh.devices.size))
  num_chunks = -(-starts.shape[1] // chunk)
  starts = jnp.pad(starts, ((0, 0), (0, num_chunks * chunk - starts.shape[1])))
  starts = starts.reshape(-1, num_chunks, chunk).swapaxes(0, 1)
  starts = jax.lax.with_sharding_constraint(
      starts, NamedSharding(setup.mesh, P(None, None, "data")))
  position = jnp.arange(num_chunks * chunk).reshape(num_chunks, 1, chunk)

  def body(total, xs):
    chunk_starts, chunk_position = xs
    window = data.gather_windows(windows.frames, chunk_starts,
                                 setup.frames_per_window)
    errors = jax.vmap(scoring.vector_errors, (None, 0, 0, 0, None))(
        setup.graphdef, params, batch_stats, window, setup.interpolate)
    mask = chunk_position < counts[:, None]
    return total + jnp.sum(jnp.where(mask, errors, 0.0), -1), None

  total, _ = jax.lax.scan(body, jnp.zeros(counts.shape, setup.loss_dtype),
                          (starts, position))
  return jnp.where(counts > 0, total / jnp.maximum(counts, 1), jnp.nan)


def keep_best(state, metric):
  """Copies each model's weights into state["best"] where `metric` improved.

  A model that has had no finite metric yet (no validation clips, a NaN
  validation loss, or no dev AUC check so far) has its latest weights as
  "best", never its untrained initialisation; its stored metric stays +inf so
  that the first real measurement still selects.
  """
  best = state["best"]
  improved = metric < best["metric"]
  take = improved | ~jnp.isfinite(best["metric"])
  return {**state, "best": {
      "params": per_model_where(take, state["params"], best["params"]),
      "batch_stats": per_model_where(take, state["batch_stats"],
                                      best["batch_stats"]),
      "metric": jnp.where(improved, metric, best["metric"]),
      "epoch": jnp.where(take, state["epoch"], best["epoch"])}}


def per_model_where(mask, new, old):
  """Takes each model's slice of `new` where mask [models] is set, else `old`'s.

  Both trees are stacked over models on their first axis.
  """
  return jax.tree.map(
      lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
      new, old)


class Trainer:
  """Places data and state on the mesh and owns the compiled programs.

  Resident mode keeps every training window on the devices and runs an epoch
  as one program. Streaming mode (`chunks` given) keeps only the validation
  windows there and feeds each epoch's training clips chunk by chunk, the
  next chunk prepared and copied while the devices train on the current one.
  """

  def __init__(self, config, group_names, host_windows, mesh=None,
               chunks=None, load=True):
    """Args:

      config: the run's config.
      group_names: the groups, in model order.
      host_windows: host WindowData; validation windows only when streaming.
      mesh: the device mesh (default: every device, axis "data").
      chunks: for streaming, a function epoch -> iterable of host WindowData
        of that epoch's training windows, all of one shape.
      load: put the windows on the devices now; with False, call load()
        later, so that compile() (which needs shapes only) can overlap it.
    """
    self.mesh = mesh or jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    config_check.check_devices(config, self.mesh.devices.size)
    self.setup = make_setup(config, group_names, self.mesh)
    self.replicated = NamedSharding(self.mesh, P())
    self.rows = NamedSharding(self.mesh, P("data"))
    self.host_windows = host_windows
    self.windows = self.put(host_windows) if load else None
    self.chunks = chunks
    self.epoch_fn = jax.jit(functools.partial(run_epoch, self.setup),
                            donate_argnums=0)
    self.pass_fn = jax.jit(functools.partial(train_pass, self.setup),
                           donate_argnums=(0, 1))
    self.finish_fn = jax.jit(functools.partial(finish_epoch, self.setup),
                             donate_argnums=(0, 1))
    self.keep_best_fn = jax.jit(keep_best, donate_argnums=0)
    # NumPy, so that every process passes the same replicated value.
    self.keys = np.asarray(model_keys(config.seed, group_names,
                                      config.train.num_seeds))
    self.init_fn = jax.jit(functools.partial(init_state, self.setup),
                           out_shardings=self.replicated)
    self.init_program = None
    self._abstract_state = None
    self.programs = None

  def put(self, host_windows):
    """Host WindowData onto the mesh: frames split by rows, the rest copied.

    Each device holds a block of frame rows, so each process reads only its
    devices' rows; the window gather then picks rows where they lie (XLA
    gathers locally and sums the pieces across devices, which is exact).
    """
    frames = host_windows.frames
    num_rows = self.abstract(host_windows).frames.shape[0]

    def read_rows(index):
      # Rows past the data (padding to a multiple of the devices) are zeros.
      start, stop, _ = index[0].indices(num_rows)
      rows = np.zeros((stop - start, frames.shape[1]), np.float32)
      have = frames[start:min(stop, frames.shape[0])]
      rows[:len(have)] = have
      return rows

    sharded = jax.make_array_from_callback(
        (num_rows, frames.shape[1]), self.rows, read_rows)
    # Audio with NaN or Inf is refused when the cache is built, so a
    # non-finite frame is damage; one reduction on the devices finds it.
    if not bool(_all_frames_finite(sharded)):
      raise AeasdError(
          f"feature cache {getattr(frames, 'directory', None)}: non-finite"
          " values in the cached frames; expected finite log-mel frames. The"
          " cache is damaged: delete the folder to rebuild it")
    copies = {name: jax.make_array_from_process_local_data(
        self.replicated, np.asarray(getattr(host_windows, name)))
              for name in host_windows._fields if name != "frames"}
    return data.WindowData(frames=sharded, **copies)

  def abstract(self, host_windows):
    """The shapes and shardings put() gives host_windows, without reading."""
    def spec(x):
      return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                  sharding=self.replicated)
    frames = host_windows.frames
    num_rows = scoring.bucket(frames.shape[0], self.mesh.devices.size)
    return data.WindowData(
        frames=jax.ShapeDtypeStruct((num_rows, frames.shape[1]), np.float32,
                                    sharding=self.rows),
        **{name: spec(getattr(host_windows, name))
           for name in host_windows._fields if name != "frames"})

  def load(self):
    """Puts the windows on the devices (reading the cache's frames)."""
    self.windows = self.put(self.host_windows)

  def init_state(self):
    if self.init_program is None:
      self.init_program = self.init_fn.lower(self.keys).compile()
    return self.init_program(self.keys)

  def abstract_state(self):
    """The state's shapes and shardings, for compiling and restoring."""
    if self._abstract_state is None:
      self._abstract_state = abstract_with_sharding(
          jax.eval_shape(functools.partial(init_state, self.setup), self.keys),
          self.replicated)
    return self._abstract_state

  def compile(self):
    """Compiles the epoch's programs ahead of time, from shapes alone."""
    # Tracing the initialisation gives the state's shapes too, which spares
    # abstract_state() a second trace (0.3 s on a CPU). Its XLA compile is
    # sizeable (3 s on an H100), so it runs on a thread beside the epoch's.
    init = self.init_fn.lower(self.keys)
    if self._abstract_state is None:
      self._abstract_state = abstract_with_sharding(init.out_info,
                                                    self.replicated)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      init_program = pool.submit(init.compile)
      self.programs = self._compile_epoch()
      self.init_program = init_program.result()

  def _compile_epoch(self):
    state = self.abstract_state()
    windows = self.abstract(self.host_windows)
    if self.chunks is None:
      return self.epoch_fn.lower(state, windows).compile()
    totals = abstract_with_sharding(
        jax.eval_shape(functools.partial(empty_totals,
                                         len(self.setup.model_names),
                                         self.setup.loss_dtype)),
        self.replicated)
    # All chunks share one shape.
    chunk = self.abstract(next(iter(self.chunks(0))))
    return (self.pass_fn.lower(state, totals, chunk, np.int32(0)).compile(),
            self.finish_fn.lower(state, totals, windows).compile())

  def epoch(self, state):
    """Runs one epoch of every model; returns (state, device metrics)."""
    if self.chunks is None:
      return self.programs(state, self.windows)
    pass_program, finish_program = self.programs
    totals = jax.tree.map(
        functools.partial(jax.make_array_from_process_local_data,
                          self.replicated),
        jax.device_get(empty_totals(len(self.setup.model_names),
                                    self.setup.loss_dtype)))
    chunks = self.chunks(int(state["epoch"]))
    for part, chunk in enumerate(prefetch(chunks, self.put)):
      state, totals = pass_program(state, totals, chunk, np.int32(part))
    return finish_program(state, totals, self.windows)


@jax.jit
def _all_frames_finite(frames):
  return jnp.all(jnp.isfinite(frames))


def prefetch(items, put, depth=2):
  """Yields put(item) for each item, preparing the next ones on a thread.

  With depth 2 the next chunk is gathered on the host and copied to the
  devices while the current one trains (double buffering).
  """
  ready = queue.Queue(maxsize=depth)
  done = object()

  def produce():
    try:
      for item in items:
        ready.put(put(item))
      ready.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      ready.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  while (item := ready.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item
  thread.join()


def local_copy(tree):
  """This process's copy of replicated arrays, usable outside the mesh.

  With several processes the mesh spans devices this process cannot read;
  every one of its devices holds the whole replicated value.
  """
  return jax.tree.map(lambda x: x.addressable_data(0), tree)


def abstract_with_sharding(abstract, sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract)


def check_trainable(config, features, groups):
  """Every clip holds a window, and every group at least one full batch.

  Checked before anything compiles, so the message names the real cause.
  """
  data.check_clip_lengths(
      features, [c for g in groups
                 for c in (*g.train_clips, *g.val_clips, *g.test_clips)],
      config.model.frames)
  batch_size = config.train.batch_size
  for group in groups:
    count = data.window_count(features, group.train_clips,
                              config.model.frames)
    if count < batch_size:
      raise AeasdError(
          f"group {group.name} has {count} training vectors, fewer than"
          f" config.train.batch_size={batch_size}; expected a smaller batch"
          " size or more training clips")


def _device_resident(config, features, groups):
  """Whether the training frames stay on the devices, or are streamed.

  config.data.device_resident decides; when unset, resident is chosen when
  the frames take at most half the free memory of a device (the rest is for
  the programs), and always where the backend reports no memory figures.
  """
  clips = [c for g in groups for c in (*g.train_clips, *g.val_clips)]
  needed = int(features.lengths[clips].sum()) * features.frames.shape[1] * 4
  if config.data.device_resident is not None:
    return config.data.device_resident
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return True
  free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  resident = needed <= free // 2
  log.info("training frames take %.2f GB, the device has %.2f GB free:"
           " %s", needed / 1e9, free / 1e9,
           "keeping them on the device" if resident else "streaming them")
  return resident


def _check_stream_chunks(config, features, groups):
  """A streamed chunk of the shortest clips must still fill one batch."""
  chunk_clips = config.data.stream_chunk_clips
  shortest = min(int(features.lengths[c]) for g in groups
                 for c in g.train_clips)
  windows = shortest - config.model.frames + 1
  if chunk_clips * windows < config.train.batch_size:
    raise AeasdError(
        f"config.data.stream_chunk_clips={chunk_clips}: a streamed chunk of"
        f" the shortest clips holds {chunk_clips * windows} training vectors,"
        f" fewer than config.train.batch_size={config.train.batch_size};"
        " expected at least"
        f" {-(-config.train.batch_size // windows)} clips per chunk")


def _finite_or_raise(metrics, setup, epoch, last_saved):
  bad = [setup.model_names[m] for m in np.flatnonzero(~metrics["finite"])]
  if bad:
    group, seed = bad[0].rsplit("/", 1)
    kept = (f"the last good checkpoint (epoch {last_saved}) is kept"
            if last_saved is not None else "no checkpoint was saved yet")
    raise AeasdError(
        f"non-finite loss or gradient in epoch {epoch} for group {group},"
        f" {seed} ({len(bad)} model(s) in all); {kept}. Expected finite"
        " training: lower config.train.learning_rate or check the data")


def _selection_metric(config, metrics, epoch, score_dev_auc):
  """Lower is better; +inf leaves a model's best weights unchanged.

  With select_by="dev_auc" (AE-ASD's choice, which peeks at labelled test
  data) the dev test AUC is also recorded in `metrics`.
  """
  if config.train.select_by == "val_loss":
    return metrics["val_loss"]
  if epoch % config.train.select_every:
    return np.full_like(metrics["val_loss"], np.inf)
  metrics["dev_auc"] = score_dev_auc()
  return -metrics["dev_auc"]


def _make_trainer(config, features, groups):
  """A Trainer with the frames resident on the devices, or streamed."""
  frames = config.model.frames
  group_names = [g.name for g in groups]
  if _device_resident(config, features, groups):
    return Trainer(config, group_names,
                   data.gather_host_windows(features, groups, frames),
                   load=False)
  _check_stream_chunks(config, features, groups)
  val_windows = data.host_windows(
      features, [[]] * len(groups), [g.val_clips for g in groups], frames)
  chunks = functools.partial(data.stream_chunks, features, groups, frames,
                             config.data.stream_chunk_clips, seed=config.seed)
  return Trainer(config, group_names, val_windows, chunks=chunks, load=False)


def _compile_while_loading(trainer, timer):
  """Compiles from shapes on a thread while the frames go to the devices.

  Notes whether the persistent compilation cache served the compile.
  """
  def compile_programs():
    with timer.phase("compile"):
      cached_before = runtime.compilation_cache_entries()
      trainer.compile()
      warm = (jax.config.jax_compilation_cache_dir and
              runtime.compilation_cache_entries() == cached_before)
      timer.notes["compile"] = ("warm" if warm else "cold") + (
          ", overlapped with loading")

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    compiled = pool.submit(compile_programs)
    with timer.phase("features"):
      trainer.load()
    compiled.result()


def train_and_evaluate(config, workdir):
  """Trains every group's models, resuming from the workdir's checkpoints.

  Then fits each group's decision threshold for the best weights. One run
  holds the workdir at a time.

  Returns:
    The final training state (stacked over models).
  """
  config_check.check_config(config)
  # The lock comes first, so that a refused second run writes nothing.
  with workdir_lock.hold(workdir, config.workdir_lock_stale_s):
    return _train_and_evaluate(config, workdir_files.prepare(workdir, config))


def _train_and_evaluate(config, workdir):
  # pylint: disable=g-import-not-at-top
  from aeasd_jax import evaluation  # Evaluation imports this module.
  timer = metric_log.PhaseTimer()
  with timer.phase("features"):
    features, groups = dataset.load(config)
    check_trainable(config, features, groups)
    trainer = _make_trainer(config, features, groups)
  setup = trainer.setup
  workdir_files.write_json(workdir / workdir_files.GROUPS_FILE,
                           [g.name for g in groups])
  _compile_while_loading(trainer, timer)
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  last_saved = mngr.latest_step()
  if last_saved is None:
    state = trainer.init_state()
  else:
    state = checkpoint.restore(mngr, trainer.abstract_state())
    log.info("resuming from epoch %d in %s", last_saved, mngr.directory)
  # Epochs after the checkpoint are trained again; their old records would
  # contradict the new ones.
  metric_log.drop_epochs_after(workdir, last_saved)
  writer = metric_log.MetricWriter(workdir, config.train.tensorboard)
  log.info("training %d model(s) (%s) on %d device(s): %s",
           len(setup.model_names), config.model.name,
           trainer.mesh.devices.size, ", ".join(setup.model_names))
  score_dev_auc = functools.partial(
      evaluation.dev_auc_per_model, config, features, groups, setup)
  stop = _StopRequest()
  epoch = int(state["epoch"])
  try:
    with stop.installed():
      while epoch < config.train.epochs and not stop.requested:
        epoch += 1
        with timer.phase("train") as elapsed, stop.interruptible():
          state, metrics = trainer.epoch(state)
          metrics = jax.device_get(local_copy(metrics))
        _finite_or_raise(metrics, setup, epoch, last_saved)
        selection = _selection_metric(
            config, metrics, epoch, lambda: score_dev_auc(local_copy(state)))
        state = trainer.keep_best_fn(state, np.asarray(selection, np.float32))
        rate = (int(metrics["steps"].sum()) * config.train.batch_size /
                elapsed())
        writer.write({"epoch": epoch, "samples_per_s": rate,
                      **{k: dict(zip(setup.model_names,
                                     map(float, metrics[k])))
                         for k in ("train_loss", "val_loss", "dev_auc")
                         if k in metrics}}, step=epoch)
        if epoch % config.train.log_every == 0 or (
            epoch == config.train.epochs):
          log.info("epoch %d/%d  loss %s  val %s  %.3gM samples/s", epoch,
                   config.train.epochs,
                   _per_group(metrics["train_loss"], setup),
                   _per_group(metrics["val_loss"], setup), rate / 1e6)
        if (epoch % config.train.checkpoint_every == 0 or
            epoch == config.train.epochs or stop.requested):
          with timer.phase("checkpoint"):
            checkpoint.save(mngr, epoch, state, in_flight=last_saved)
            last_saved = epoch
  except KeyboardInterrupt:
    checkpoint.wait(mngr, last_saved)
    raise Interrupted(
        f"stopped during epoch {epoch}; rerun the same command to resume from"
        f" {_resume_point(mngr.latest_step())}") from None
  with timer.phase("checkpoint"):
    checkpoint.wait(mngr, last_saved)
  if stop.requested:
    raise Interrupted(f"stopped after epoch {epoch} as asked (Ctrl-C);"
                      " rerun the same command to resume from it")
  _warn_unselected(config, setup, groups, local_copy(state["best"]))
  with timer.phase("thresholds"):
    best = local_copy(state["best"])
    evaluation.fit_thresholds(
        config, workdir, features, groups, setup, best["params"],
        best["batch_stats"], f"best@{int(state['epoch'])}")
  writer.write({"timing_s": timer.totals(),
                "compile": timer.notes["compile"].split(",")[0]})
  log.info("time: %s", timer.summary())
  writer.close()
  return state


def _resume_point(last_saved):
  return (f"epoch {last_saved}, its last checkpoint" if last_saved is not None
          else "the start: no checkpoint was saved yet")


class _StopRequest:
  """Ctrl-C once: finish the epoch, save it and stop. Twice: stop at once.

  "At once" only inside an epoch's computation: a checkpoint write cut short
  leaves Orbax's threads waiting forever, so the process would never exit.
  Installed only in a single-process run's main thread: the processes of a
  multi-host run could not agree on the epoch to stop at.
  """

  def __init__(self):
    self.requested = False
    self._interruptible = False

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested and self._interruptible:
      raise KeyboardInterrupt
    if self.requested:
      log.warning("Ctrl-C: finishing this epoch's checkpoint write first")
      return
    self.requested = True
    log.warning("Ctrl-C: stopping once this epoch is saved (Ctrl-C again to"
                " stop at once)")

  @contextlib.contextmanager
  def interruptible(self):
    """Marks the block as safe to stop with KeyboardInterrupt."""
    self._interruptible = True
    try:
      yield
    finally:
      self._interruptible = False

  @contextlib.contextmanager
  def installed(self):
    if (threading.current_thread() is not threading.main_thread() or
        jax.process_count() > 1):
      yield
      return
    previous = signal.signal(signal.SIGINT, self._handle)
    try:
      yield
    finally:
      signal.signal(signal.SIGINT, previous)


def _warn_unselected(config, setup, groups, best):
  """Says which models' "best" weights are their latest, and why."""
  unselected = [name for name, metric in zip(setup.model_names,
                                             np.asarray(best["metric"]))
                if not np.isfinite(metric)]
  if not unselected:
    return
  if config.train.select_by == "dev_auc":
    why = (f"config.train.select_every={config.train.select_every} exceeds"
           " the epochs trained, so no dev AUC check ran")
  else:
    empty = [g.name for g in groups if not len(g.val_clips)]
    why = (f"no training clip was held out for validation in {empty}"
           f" (config.train.validation_split="
           f"{config.train.validation_split}, too few clips)" if empty else
           "the validation loss was never finite")
  log.warning("no model selection for %s: %s; their 'best' weights are their"
              " latest", ", ".join(unselected), why)


def _per_group(values, setup):
  return " ".join(f"{name}={v:.4g}" for name, v in zip(setup.model_names,
                                                         values))
