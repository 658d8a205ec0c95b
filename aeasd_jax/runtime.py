"""Process-wide JAX setup shared by the entry points.

The persistent compilation cache, multi-process initialisation, and turning
AeasdError into a one-line message instead of a traceback.
"""

import difflib
import logging
import os
import runpy
import sys

import jax
import ml_collections
from absl import flags
from absl import logging as absl_logging

from aeasd_jax import cache_dir
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import Interrupted


def enable_compilation_cache(config):
  """Turns on JAX's persistent compilation cache (config.compile_cache_dir).

  The thresholds are zero so that this project's programs, some of which
  compile in well under a second on a CPU, are kept too.
  """
  if config.compile_cache_dir == "off":
    return
  directory = config.compile_cache_dir or str(cache_dir.root(config) / "jax")
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
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )


def configure_logging():
  """Project messages at INFO on stderr; other libraries' only from WARNING.

  Orbax logs every save at INFO through absl, which would bury the progress.
  """
  absl_logging.set_verbosity(absl_logging.WARNING)
  project = logging.getLogger("aeasd_jax")
  if not project.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
      logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    )
    project.addHandler(handler)
  project.setLevel(logging.INFO)
  project.propagate = False


def run(fn):
  """Runs fn(); an AeasdError becomes `error: ...` on stderr and exit code 2.

  A stop by Ctrl-C becomes one `interrupted: ...` line and exit code 130,
  the shell's code for SIGINT.
  """
  try:
    return fn()
  except AeasdError as e:
    _exit(f"error: {e}", 2)
  except Interrupted as e:
    _exit(f"interrupted: {e}", 130)
  except KeyboardInterrupt:
    _exit(
      "interrupted: stopped by Ctrl-C before any training epoch; files"
      " already written are complete",
      130,
    )


def _exit(line, code):
  sys.stdout.flush()
  sys.stderr.flush()
  sys.stderr.write(line + "\n")
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing, where an override of no such setting is one line.

  For `--config.train.nope=1` ml_collections raises a KeyError or
  AttributeError from deep inside its parser; this names the setting and
  its close matches instead. Other flag errors are one line too.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(f"error: {e}", 2)
  except (KeyError, AttributeError) as e:
    settings = sorted(_dotted_settings(_config_file_settings(argv)))
    unknown = [name for name in _override_names(argv) if name not in settings]
    if not unknown:
      _exit(
        f"error: a --config override failed ({e}); expected"
        " --config.<section>.<setting>=<value>",
        2,
      )
    close = difflib.get_close_matches(unknown[0], settings, n=3, cutoff=0.6)
    hint = (
      f"close matches: {', '.join('config.' + c for c in close)}"
      if close
      else "see configs/default.py for the settings"
    )
    _exit(f"error: --config.{unknown[0]}: no such setting; {hint}", 2)


def _config_file_settings(argv):
  """The config that --config names, loaded again without the overrides.

  The flag holds no value once an override has failed.
  """
  path = next(
    arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--config=")
  )
  return runpy.run_path(path.split(":", 1)[0])["get_config"]()


def _override_names(argv):
  """The dotted settings of --config.x.y=value (and --[no]config.x.y) flags."""
  for arg in argv[1:]:
    for prefix in ("--config.", "--noconfig."):
      if arg.startswith(prefix):
        yield arg[len(prefix) :].split("=", 1)[0]


def _dotted_settings(config, prefix=""):
  """Every setting of a ConfigDict as "section.name", sections included."""
  for key, value in config.items():
    yield prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from _dotted_settings(value, f"{prefix}{key}.")
