"""Files in a workdir written atomically, and the config a workdir belongs to.

A file is written to a temporary name and renamed over the old one, so a run
killed mid-write leaves the previous version intact.
"""

import contextlib
import json
import os
import pathlib
import tempfile

import jax
import ml_collections

from aeasd_jax import config_check
from aeasd_jax.errors import AeasdError

CONFIG_FILE = "config.json"
# Settings that fix the shape and meaning of a checkpoint; the others (epochs,
# logging, scoring) may change between a run and its resumption.
IDENTITY_SETTINGS = ("seed", "model", "features", "data.group_by",
                     "data.machine_types", "data.use_eval_train",
                     "train.num_seeds", "train.validation_split")


@contextlib.contextmanager
def atomic_open(path, mode="w"):
  """Opens a temporary file that replaces `path` only if the block succeeds."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_text(path, text):
  """Atomically writes `text` to `path`, from process 0 only."""
  # In a multi-process run every process computes the same results; one
  # writer keeps a shared filesystem consistent.
  if jax.process_index() != 0:
    return
  try:
    with atomic_open(path) as f:
      f.write(text)
  except OSError as e:
    raise AeasdError(f"cannot write {path} ({e.strerror or e}); expected a"
                     " writable folder with free space") from None


def prepare(workdir, config):
  """Creates the workdir and records the config, or checks it matches.

  Raises:
    AeasdError: the workdir cannot be written, or it holds a run of another
      model or dataset that its checkpoints would not fit.
  """
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise AeasdError(f"workdir {workdir}: cannot create it ({e.strerror});"
                     " expected a writable location") from None
  if not os.access(workdir, os.W_OK):
    raise AeasdError(f"workdir {workdir}: not writable; expected a folder this"
                     " user can write")
  saved_path = workdir / CONFIG_FILE
  if saved_path.exists():
    saved = load_config(workdir)
    for setting in IDENTITY_SETTINGS:
      old, new = _get(saved, setting), _get(config, setting)
      if old != new:
        raise AeasdError(
            f"workdir {workdir} holds a run with {setting}={old}, but this"
            f" config has {new}; use another --workdir or the same settings")
  write_text(saved_path, config.to_json(indent=2, sort_keys=True))
  return workdir


def load_config(workdir):
  """The ConfigDict a workdir was trained with."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except OSError as e:
    raise AeasdError(f"{path}: cannot read ({e.strerror}); expected a workdir"
                     " written by train.py") from None
  except ValueError as e:
    raise AeasdError(f"{path}: not valid JSON ({e})") from None


def _get(config, dotted):
  value = config_check.lookup(config, dotted)
  if isinstance(value, ml_collections.ConfigDict):
    return json.loads(value.to_json(sort_keys=True))
  return list(value) if isinstance(value, (list, tuple)) else value
