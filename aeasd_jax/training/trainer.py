"""Placement and compilation: the Trainer puts data and state on the mesh.

It owns the jitted programs of steps.py, compiles them ahead of time from
shapes alone, and feeds a streamed epoch chunk by chunk (double buffered).
"""

import concurrent.futures
import functools
import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aeasd_jax.training import config_check
from aeasd_jax.scoring import reconstruction
from aeasd_jax.training import state as state_lib
from aeasd_jax.training import steps
from aeasd_jax.data import window_data
from aeasd_jax.errors import AeasdError


class Trainer:
  """Places data and state on the mesh and owns the compiled programs.

  Resident mode keeps every training window on the devices and runs an epoch
  as one program. Streaming mode (`chunks` given) keeps only the validation
  windows there and feeds each epoch's training clips chunk by chunk, the
  next chunk prepared and copied while the devices train on the current one.
  """

  def __init__(
    self,
    config,
    group_names,
    host_windows,
    mesh=None,
    chunks=None,
    load=True,
    class_names=(),
  ):
    """Args:

    config: the run's config.
    group_names: the scored groups, in order.
    host_windows: host WindowData; validation windows only when streaming.
    mesh: the device mesh (default: every device, axis "data").
    chunks: for streaming, a function epoch -> iterable of host WindowData
      of that epoch's training windows, all of one shape.
    load: put the windows on the devices now; with False, call load()
      later, so that compile() (which needs shapes only) can overlap it.
    class_names: a classifier's classes, in label order.
    """
    self.mesh = mesh or jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    config_check.check_devices(config, self.mesh.devices.size)
    self.setup = state_lib.make_setup(
      config, group_names, self.mesh, class_names
    )
    self.replicated = NamedSharding(self.mesh, P())
    self.rows = NamedSharding(self.mesh, P("data"))
    self.host_windows = host_windows
    self.windows = self.put(host_windows) if load else None
    self.chunks = chunks
    self.epoch_fn = jax.jit(
      functools.partial(steps.run_epoch, self.setup), donate_argnums=0
    )
    self.pass_fn = jax.jit(
      functools.partial(steps.train_pass, self.setup), donate_argnums=(0, 1)
    )
    self.finish_fn = jax.jit(
      functools.partial(steps.finish_epoch, self.setup), donate_argnums=(0, 1)
    )
    self.keep_best_fn = jax.jit(steps.keep_best, donate_argnums=0)
    # NumPy, so that every process passes the same replicated value.
    self.keys = np.asarray(
      state_lib.model_keys(
        config.seed, self.setup.train_group_names, config.train.num_seeds
      )
    )
    self.init_fn = jax.jit(
      functools.partial(state_lib.init_state, self.setup),
      out_shardings=self.replicated,
    )
    self.init_program = None
    self._abstract_state = None
    self.programs = None

  def put(self, host_windows):
    """Host WindowData onto the mesh: frames (and waves) split by rows.

    Each device holds a block of frame rows, so each process reads only its
    devices' rows; the window gather then picks rows where they lie (XLA
    gathers locally and sums the pieces across devices, which is exact).
    The small per-group arrays are copied to every device.
    """
    abstract = self.abstract(host_windows)
    placed = {}
    for name in host_windows._fields:
      value = getattr(host_windows, name)
      if value is None:
        placed[name] = None
      elif name in _ROW_SHARDED:
        placed[name] = self._put_rows(value, getattr(abstract, name).shape)
      else:
        placed[name] = jax.make_array_from_process_local_data(
          self.replicated, np.asarray(value)
        )
    return window_data.WindowData(**placed)

  def _put_rows(self, host, shape):
    """A lazily read host array, its rows split over the mesh's devices."""

    def read_rows(index):
      # Rows past the data (padding to a multiple of the devices) are zeros.
      start, stop, _ = index[0].indices(shape[0])
      rows = np.zeros((stop - start, shape[1]), np.float32)
      have = host[start : min(stop, host.shape[0])]
      rows[: len(have)] = have
      return rows

    sharded = jax.make_array_from_callback(shape, self.rows, read_rows)
    # Audio with NaN or Inf is refused when the cache is built, so a
    # non-finite value is damage; one reduction on the devices finds it.
    if not bool(_all_finite(sharded)):
      raise AeasdError(
        f"feature cache {getattr(host, 'directory', None)}: non-finite"
        " values in the cached frames or waveforms; expected finite values."
        " The cache is damaged: delete the folder to rebuild it"
      )
    return sharded

  def abstract(self, host_windows):
    """The shapes and shardings put() gives host_windows, without reading."""

    def spec(name, x):
      if x is None:
        return None
      if name in _ROW_SHARDED:
        rows = reconstruction.bucket(x.shape[0], self.mesh.devices.size)
        return jax.ShapeDtypeStruct(
          (rows, x.shape[1]), np.float32, sharding=self.rows
        )
      return jax.ShapeDtypeStruct(
        np.shape(x), np.asarray(x).dtype, sharding=self.replicated
      )

    return window_data.WindowData(
      **{
        name: spec(name, getattr(host_windows, name))
        for name in host_windows._fields
      }
    )

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
      self._abstract_state = state_lib.abstract_state(
        self.setup, self.keys, self.replicated
      )
    return self._abstract_state

  def compile(self):
    """Compiles the epoch's programs ahead of time, from shapes alone."""
    # Tracing the initialisation gives the state's shapes too, which spares
    # abstract_state() a second trace (0.3 s on a CPU). Its XLA compile is
    # sizeable (3 s on an H100), so it runs on a thread beside the epoch's.
    init = self.init_fn.lower(self.keys)
    if self._abstract_state is None:
      self._abstract_state = state_lib.with_sharding(
        init.out_info, self.replicated
      )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      init_program = pool.submit(init.compile)
      self.programs = self._compile_epoch()
      self.init_program = init_program.result()

  def _compile_epoch(self):
    state = self.abstract_state()
    windows = self.abstract(self.host_windows)
    if self.chunks is None:
      return self.epoch_fn.lower(state, windows).compile()
    totals = state_lib.with_sharding(
      jax.eval_shape(
        functools.partial(
          steps.empty_totals, len(self.setup.model_names), self.setup.loss_dtype
        )
      ),
      self.replicated,
    )
    # All chunks share one shape.
    chunk = self.abstract(next(iter(self.chunks(0))))
    return (
      self.pass_fn.lower(state, totals, chunk, np.int32(0)).compile(),
      self.finish_fn.lower(state, totals, windows).compile(),
    )

  def keep_best(self, state, metric):
    """steps.keep_best with the host's [models] metric copied explicitly."""
    # The same value on every process, as put() copies the window rows.
    metric = jax.make_array_from_process_local_data(
      self.replicated, np.asarray(metric, np.float32)
    )
    return self.keep_best_fn(state, metric)

  def epoch(self, state):
    """Runs one epoch of every model; returns (state, device metrics)."""
    if self.chunks is None:
      return self.programs(state, self.windows)
    pass_program, finish_program = self.programs
    totals = jax.tree.map(
      functools.partial(
        jax.make_array_from_process_local_data, self.replicated
      ),
      jax.device_get(
        steps.empty_totals(len(self.setup.model_names), self.setup.loss_dtype)
      ),
    )
    chunks = self.chunks(int(state.epoch))
    for part, chunk in enumerate(prefetch(chunks, self.put)):
      state, totals = pass_program(state, totals, chunk, np.int32(part))
    return finish_program(state, totals, self.windows)


# The big arrays, split by rows over the devices; the rest is replicated.
_ROW_SHARDED = ("frames", "waves")


@jax.jit
def _all_finite(rows):
  return jnp.all(jnp.isfinite(rows))


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
