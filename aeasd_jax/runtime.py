"""Process-wide JAX setup shared by the entry points.

The persistent compilation cache, multi-process initialisation, and turning
AeasdError into a one-line message instead of a traceback.
"""

import atexit
import contextlib
import difflib
import json
import logging
import os
import pathlib
import runpy
import sys
import threading

import jax
import ml_collections
from absl import flags
from absl import logging as absl_logging

from aeasd_jax import cache_dir
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import Interrupted
from aeasd_jax.errors import shown


def enable_compilation_cache(config):
  """Turns on JAX's persistent compilation cache (config.compile_cache_dir).

  The thresholds are zero so that this project's programs, some of which
  compile in well under a second on a CPU, are kept too.
  """
  if config.compile_cache_dir == "off":
    return
  directory = os.path.expanduser(
    config.compile_cache_dir or str(cache_dir.root(config) / "jax")
  )
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Each compile that may use the persistent cache records the first event;
# one served from the cache also records the second (jax/_src/compiler.py).
_CACHE_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
# Recorded once per program XLA compiles, whether or not a cache is on.
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounts:
  """Compiles seen by compile_tracker, and how many the cache served."""

  def __init__(self):
    self.requests = 0
    self.hits = 0
    self.programs = 0  # Programs XLA compiled (not served from the cache).

  @property
  def warm(self):
    """Every compile was served from the persistent cache.

    Counting the files in the cache folder instead would call warm a compile
    whose entry could not be written (an unwritable cache folder).
    """
    return self.requests > 0 and self.hits == self.requests


@contextlib.contextmanager
def compile_tracker():
  """Counts the compiles, on any thread, while the block runs.

  Yields:
    A CompileCounts, complete once the block has ended.
  """
  counts, lock = CompileCounts(), threading.Lock()

  def listen(event, **unused_metadata):
    with lock:
      counts.requests += event == _CACHE_REQUEST
      counts.hits += event == _CACHE_HIT

  def listen_duration(event, unused_duration, **unused_metadata):
    with lock:
      counts.programs += event == _BACKEND_COMPILE

  jax.monitoring.register_event_listener(listen)
  jax.monitoring.register_event_duration_secs_listener(listen_duration)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_listener(listen)
    jax.monitoring.unregister_event_duration_listener(listen_duration)


def initialize_distributed(coordinator_address, num_processes, process_id):
  """jax.distributed.initialize when a coordinator is given (multi-host).

  Without --coordinator_address the run is one process, or a Cloud TPU pod
  slice whose runtime connects the workers itself; --num_processes and
  --process_id then have nothing to join and are refused (1 and 0 aside).
  With it, either may be left out where the cluster (Slurm, Open MPI,
  Kubernetes, Cloud TPU) tells JAX its value.

  Raises:
    AeasdError: a flag is out of range, or given without a coordinator.
  """
  if num_processes is not None and num_processes < 1:
    raise AeasdError(
      f"--num_processes={num_processes}: expected the number of processes in"
      " the run, 1 or more"
    )
  if process_id is not None and (
    process_id < 0
    or (num_processes is not None and process_id >= num_processes)
  ):
    last = "--num_processes - 1" if num_processes is None else num_processes - 1
    raise AeasdError(
      f"--process_id={process_id}: expected this process's index,"
      f" from 0 to {last}"
    )
  if not coordinator_address:
    stray = [
      f"--{name}={value}"
      for name, value, single in (
        ("num_processes", num_processes, 1),
        ("process_id", process_id, 0),
      )
      if value not in (None, single)
    ]
    if stray:
      raise AeasdError(
        f"{' '.join(stray)} without --coordinator_address; expected"
        " --coordinator_address=HOST:PORT (process 0's) with --num_processes"
        " and --process_id, or none of the three on a Cloud TPU pod slice,"
        " whose runtime connects the workers itself"
      )
    return
  _check_address(coordinator_address)
  # CPU collectives across processes need gloo; GPUs and TPUs bring their
  # own (NCCL, ICI) and ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )
  except ValueError as e:  # A value this environment does not supply.
    raise AeasdError(
      f"--coordinator_address={coordinator_address}:"
      f" {str(e).rstrip('.')}; expected"
      " --num_processes=N and --process_id=I as well, unless the cluster"
      " (Slurm, Open MPI, Kubernetes, Cloud TPU) supplies them"
    ) from None


def _check_address(address):
  """Refuses a coordinator address without a port, which JAX indexes into."""
  host, _, port = address.rpartition(":")
  if not (host and port.isdigit() and 0 < int(port) < 65536):
    raise AeasdError(
      f"--coordinator_address={shown(address)}: expected HOST:PORT, process"
      " 0's host and a free port such as host0:1234"
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

  A stop by Ctrl-C or SIGTERM becomes one `interrupted: ...` line and the
  shell's exit code for the signal: 130 (SIGINT) or 143 (SIGTERM).
  """
  try:
    return fn()
  except AeasdError as e:
    _exit(f"error: {e}", 2)
  except Interrupted as e:
    _exit(f"interrupted: {e}", e.exit_code)
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
  # The line says what went wrong and must stay the last one: the tasks and
  # threads of a failed read (Orbax's, TensorStore's) may report only at
  # shutdown, through asyncio's log or Python's hooks, after it. Only at
  # shutdown: a caller that catches the SystemExit keeps its logs.
  atexit.register(_quiet_shutdown)
  sys.exit(code)


def _quiet_shutdown():
  logging.disable(logging.CRITICAL)
  sys.unraisablehook = threading.excepthook = lambda unused: None
  sys.excepthook = lambda *unused: None


def parse_flags(argv):
  """absl's flag parsing, where an override of no such setting is one line.

  For `--config.train.nope=1` ml_collections raises a KeyError or
  AttributeError from deep inside its parser; this names the setting and
  its close matches instead. Other flag errors are one line too, with any
  unprintable character of a value escaped, and so is a --config file that
  does not exist, which ml_collections would report only when the config
  is first read, as a traceback.

  `--config.<setting>=None` sets the setting to None (data.dcase_year: tell
  the year from the names), which ml_collections refuses for a setting of
  a type; check_config then says whether the setting takes None.
  """
  _check_config_file(argv)
  parsed, nones = _without_none_overrides(argv)
  try:
    rest = flags.FLAGS(parsed)
    _set_none(nones)
  except flags.Error as e:
    # A stray argument is often why a required flag is missing.
    _refuse_arguments(_unparsed_arguments(parsed))
    _exit(f"error: {_printable(str(e))}", 2)
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
  _refuse_arguments(rest[1:])
  return rest


def _printable(text):
  """`text` with each unprintable character escaped, so it stays one line."""
  return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def _config_path(argv):
  """The file the last --config flag names (its `:argument` cut), or None."""
  path, args = None, iter(argv[1:])
  for arg in args:
    if arg == "--":
      break
    if arg.startswith("--config="):
      path = arg[len("--config=") :]
    elif arg == "--config":
      path = next(args, "")
  return None if path is None else path.split(":", 1)[0]


def _check_config_file(argv):
  path = _config_path(argv)
  if path is None or "config" not in flags.FLAGS or os.path.isfile(path):
    return
  what = "is a folder" if os.path.isdir(path) else "no such file"
  _exit(
    f"error: --config={shown(path)}: {what}; expected a config file such as"
    " configs/idnn.py",
    2,
  )


def _without_none_overrides(argv):
  """argv less its `--config.<setting>=None` flags, and the settings to unset.

  A later flag for the same setting wins, as absl's last value does.
  """
  if "config" not in flags.FLAGS:
    return argv, []
  kept, unset = [], {}
  for i, arg in enumerate(argv):
    if arg == "--":
      kept += argv[i:]
      break
    name, _, value = arg.partition("=")
    override = i > 0 and name.startswith("--config.")
    if override:
      unset[name[len("--config.") :]] = value == "None"
    if not (override and value == "None"):
      kept.append(arg)
  return kept, [name for name, none in unset.items() if none]


def _set_none(settings):
  """Sets each dotted setting of the parsed --config to None.

  Raises:
    KeyError or AttributeError: no such setting, as for other overrides.
  """
  for dotted in settings:
    *sections, name = dotted.split(".")
    holder = flags.FLAGS.config
    for section in sections:
      holder = holder[section]
    if isinstance(holder[name], ml_collections.ConfigDict):
      _exit(
        f"error: --config.{dotted}=None: a section of settings; expected"
        f" one setting such as --config.{dotted}.<name>=None",
        2,
      )
    holder[name] = None


def _refuse_arguments(arguments):
  """Exits on an argument that is not a flag, which absl would pass over."""
  if not arguments:
    return
  arg = arguments[0]
  guess = _flag_meant(arg)
  _exit(
    f"error: unexpected argument {arg!r}; expected flags only"
    + (f" (did you mean --{guess}={arg}?)" if guess else ""),
    2,
  )


def _flag_meant(arg):
  """The flag a stray argument was probably meant for, or None."""
  path = pathlib.Path(arg).expanduser()
  for name, fits in (
    ("config", arg.split(":", 1)[0].endswith(".py")),
    ("workdir", (path / "config.json").is_file()),
    ("wav", path.suffix.lower() in (".wav", ".flac")),
  ):
    if fits and name in flags.FLAGS:
      return name
  return None


def _unparsed_arguments(argv):
  """The arguments absl leaves unparsed: neither flags nor their values.

  For when absl raised before returning them, e.g. a required flag left out
  because its value was given without the flag.
  """
  found, args = [], iter(argv[1:])
  for arg in args:
    if arg == "--":
      found.extend(args)
    elif not arg.startswith("-") or arg == "-":
      found.append(arg)
    else:
      name = arg.lstrip("-")
      # `--flag value`: a non-boolean flag without `=` takes the next one.
      if "=" not in name and name in flags.FLAGS:
        if not flags.FLAGS[name].boolean:
          next(args, None)
  return found


def is_utf8(name):
  """Whether a name from the OS (surrogate-escaped bytes) is valid UTF-8."""
  try:
    os.fspath(name).encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def path_problem(path, *, folder):
  """Why `path` cannot be a file or folder of a run, or None.

  A name that is not valid UTF-8 fits in no JSON file, cache key or
  TensorStore path; nothing can be made under a regular file.

  Args:
    path: the path, `~` expanded.
    folder: whether the path must be a folder (or not exist yet) rather
      than a file.

  Returns:
    "<the problem>; expected <what would do>", or None.
  """
  path = pathlib.Path(path)
  if not is_utf8(path):
    return "not valid UTF-8; expected a UTF-8 name (rename it)"
  # Upwards to the first place that exists, which must be a folder.
  for place in (path, *path.parents) if folder else path.parents:
    if os.path.isdir(place):
      return None
    if os.path.exists(place):
      return (
        f"{shown(place)} is a file, not a folder; expected a path below"
        " folders only"
      )
  return None


class PathParser(flags.ArgumentParser):
  """A path flag's value with `~` expanded, as config.data.root's is.

  A path that cannot be used (path_problem) is refused as the flags are
  parsed, before any work: with folder=True, a file in place of the
  folder too.

  For flags.DEFINE(runtime.PathParser(), name, default, help).
  """

  def __init__(self, folder=False):
    super().__init__()
    self._folder = folder

  def parse(self, argument):
    path = os.path.expanduser(argument)
    problem = path_problem(path, folder=self._folder)
    if problem:
      raise ValueError(problem)
    return path

  def flag_type(self):
    return "string"


def _config_file_settings(argv):
  """The config that --config names, loaded again without the overrides.

  The flag holds no value once an override has failed.
  """
  return runpy.run_path(_config_path(argv))["get_config"]()


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


def default_workdir(config, config_file):
  """runs/<config.name>, and _<year> where the year is not the file's own.

  configs/dcase2023.py trained with --config.data.dcase_year=2024 goes to
  runs/dcase2023_2024, so that runs of two years never share a workdir.
  """
  year = config.data.dcase_year
  own = runpy.run_path(config_file.split(":", 1)[0])["get_config"]()
  if year is not None and year != own.data.dcase_year:
    return f"runs/{config.name}_{year}"
  return f"runs/{config.name}"
