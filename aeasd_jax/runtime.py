"""Process-wide JAX setup shared by the entry points.

The persistent compilation cache, multi-process initialisation, and turning
AeasdError into a one-line message instead of a traceback.
"""

import logging
import os
import sys

import jax
from absl import logging as absl_logging

from aeasd_jax import dataset
from aeasd_jax.errors import AeasdError


def enable_compilation_cache(config):
  """Turns on JAX's persistent compilation cache (config.compile_cache_dir).

  The thresholds are zero so that this project's programs, some of which
  compile in well under a second on a CPU, are kept too.
  """
  if config.compile_cache_dir == "off":
    return
  directory = config.compile_cache_dir or str(
      dataset.cache_root(config) / "jax")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def compilation_cache_entries():
  """Files in the persistent compilation cache; 0 when it is off.

  A compile that adds none was served from the cache (a warm start).
  """
  directory = jax.config.jax_compilation_cache_dir
  if not directory or not os.path.isdir(directory):
    return 0
  return sum(len(files) for _, _, files in os.walk(directory))


def initialize_distributed(coordinator_address, num_processes, process_id):
  """jax.distributed.initialize when a coordinator is given (multi-host)."""
  if coordinator_address:
    # CPU collectives across processes need gloo; GPUs and TPUs bring their
    # own (NCCL, ICI) and ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)


def configure_logging():
  """Project messages at INFO on stderr; other libraries' only from WARNING.

  Orbax logs every save at INFO through absl, which would bury the progress.
  """
  absl_logging.set_verbosity(absl_logging.WARNING)
  project = logging.getLogger("aeasd_jax")
  if not project.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s",
                                           "%H:%M:%S"))
    project.addHandler(handler)
  project.setLevel(logging.INFO)
  project.propagate = False


def run(fn):
  """Runs fn(); an AeasdError becomes `error: ...` on stderr and exit code 2."""
  try:
    return fn()
  except AeasdError as e:
    sys.stderr.flush()
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
