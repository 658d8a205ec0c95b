"""Files in a workdir: written atomically as strict JSON, read with checks.

A file is written to a temporary name and renamed over the old one, so a run
killed mid-write leaves the previous version intact. A damaged file is named
when it is read, before any work depends on it.
"""

import contextlib
import importlib
import json
import logging
import math
import numbers
import os
import pathlib
import secrets
import stat

import jax
import ml_collections

from aeasd_jax import config_check
from aeasd_jax import dataset
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GROUPS_FILE = "groups.json"  # Group names in model order.
THRESHOLDS_FILE = "thresholds.json"  # {weights tag: their fitted thresholds}
DATA_FILE = "data.json"  # The fingerprint of the data the run trained on.
# Settings that fix the shape and meaning of a checkpoint; the others (epochs,
# logging, scoring) may change between a run and its resumption. Which data
# the run trains on is checked by its fingerprint (DATA_FILE), so a moved
# copy of the same data is the same run.
IDENTITY_SETTINGS = (
  "seed",
  "model",
  "features",
  "data.group_by",
  "data.machine_types",
  "data.use_eval_train",
  "train.num_seeds",
  "train.validation_split",
  # The stored best metric is a validation loss or a negative dev AUC;
  # comparing one with the other would keep the wrong weights.
  "train.select_by",
)
_CONFIG_HINT = (
  "expected the config train.py wrote for this run; restore it"
  " or use another --workdir"
)
_GROUPS_HINT = "delete it and rerun train.py, which writes it again"
_DATA_HINT = (
  "delete it and rerun train.py to write it again (its data is then taken"
  " on trust)"
)
_THRESHOLDS_HINT = (
  "delete it; train.py and evaluate.py fit the thresholds again"
)
_JSON_NAMES = {
  dict: "object",
  list: "list",
  str: "string",
  int: "number",
  float: "number",
  bool: "boolean",
  type(None): "null",
}


@contextlib.contextmanager
def atomic_open(path, mode="w"):
  """Opens a temporary file that replaces `path` only if the block succeeds.

  The file gets the mode a plain open() would give it: that of the file it
  replaces, or for a new file 0666 less the umask.
  """
  path = pathlib.Path(path)
  fd, tmp = _create_beside(path)
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


def _create_beside(path):
  # O_CREAT applies the umask, which mkstemp's fixed 0600 ignores; reading
  # the umask with os.umask would change it for every thread meanwhile.
  while True:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    try:
      fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
      break
    except FileExistsError:
      continue
  try:
    os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
  except FileNotFoundError:
    pass
  except BaseException:
    os.close(fd)
    os.unlink(tmp)
    raise
  return fd, tmp


def dumps_json(value, **kwargs):
  """json.dumps, with each non-finite float written as null.

  json.dumps would write Infinity and NaN, which strict JSON parsers (jq,
  JavaScript, most languages' libraries) reject.
  """
  return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def _finite_or_none(value):
  if isinstance(value, dict):
    return {k: _finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_none(v) for v in value]
  if isinstance(value, numbers.Real) and not isinstance(
    value, numbers.Integral
  ):
    return float(value) if math.isfinite(value) else None
  return value


def write_error(path, error):
  """The AeasdError for an OSError while writing `path`."""
  return AeasdError(
    f"cannot write {path} ({error.strerror or error});"
    " expected a writable folder with free space"
  )


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
    raise write_error(path, e) from None


def write_json(path, value, **kwargs):
  """Atomically writes `value` to `path` as strict JSON, from process 0 only."""
  write_text(path, dumps_json(value, **kwargs))


def read_json(path, expected_type, hint):
  """The JSON value in `path`, which must be an `expected_type` (dict, list).

  Args:
    path: the file.
    expected_type: the Python type the top-level value must have.
    hint: what to do about a damaged file, for the error message.

  Raises:
    AeasdError: the file is missing, unreadable, not JSON or of another type.
  """
  path = pathlib.Path(path)
  text = read_bytes(path, hint)
  if text is None:
    raise missing_error(path)
  try:
    value = json.loads(text)
  except ValueError as e:  # Also a UnicodeDecodeError.
    raise _damaged(path, f"not valid JSON: {e}", hint) from None
  if not isinstance(value, expected_type):
    found = _JSON_NAMES.get(type(value), type(value).__name__)
    raise _damaged(
      path,
      f"expected a JSON {_JSON_NAMES[expected_type]},"
      f" found {'an' if found[0] in 'aeiou' else 'a'} {found}",
      hint,
    )
  return value


def read_bytes(path, hint):
  """The bytes of `path`, or None when it does not exist.

  Raises:
    AeasdError: the file exists but cannot be read; `hint` says what to do.
  """
  try:
    return pathlib.Path(path).read_bytes()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise AeasdError(
      f"{path}: cannot read ({e.strerror or e}); {hint}"
    ) from None


def missing_error(path):
  """The AeasdError for a workdir file that does not exist."""
  return AeasdError(f"{path}: missing; expected a workdir written by train.py")


def _damaged(path, what, hint):
  return AeasdError(f"{path}: damaged ({what}); {hint}")


def read_groups(workdir):
  """The group names in groups.json, in model order."""
  path = pathlib.Path(workdir) / GROUPS_FILE
  groups = read_json(path, list, _GROUPS_HINT)
  if not all(isinstance(g, str) for g in groups):
    raise _damaged(path, "expected a list of group names", _GROUPS_HINT)
  return groups


def read_thresholds(workdir):
  """thresholds.json: {tag: {"percentile", "pooling", "thresholds"}}.

  Returns:
    {} when the file does not exist yet. A threshold stored as null (it was
    not finite) comes back as NaN, which flags no clip as anomalous.
  """
  path = pathlib.Path(workdir) / THRESHOLDS_FILE
  if not path.exists():
    return {}
  stored = read_json(path, dict, _THRESHOLDS_HINT)
  for tag, entry in stored.items():
    if not (
      isinstance(entry, dict)
      and _is_number(entry.get("percentile"))
      and isinstance(entry.get("pooling"), str)
      and isinstance(entry.get("thresholds"), dict)
      and all(v is None or _is_number(v) for v in entry["thresholds"].values())
    ):
      raise _damaged(
        path,
        f"entry {tag!r} is not an object of percentile,"
        " pooling and numeric thresholds",
        _THRESHOLDS_HINT,
      )
    entry["thresholds"] = {
      g: math.nan if v is None else v for g, v in entry["thresholds"].items()
    }
  return stored


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_workdir(workdir):
  """Creates the workdir if needed; returns it as a Path."""
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise AeasdError(
      f"workdir {workdir}: cannot create it ({e.strerror});"
      " expected a writable location"
    ) from None
  if not os.access(workdir, os.W_OK):
    raise AeasdError(
      f"workdir {workdir}: not writable; expected a folder this user can write"
    )
  return workdir


def check_resume(workdir, config):
  """Creates the workdir, or checks that `config` may resume the run in it.

  Writes no file: a rerun that fails any check leaves the workdir as it was
  (record_run writes once every check has passed). Every JSON file the
  workdir holds is checked, so a damaged one stops the run before any
  training.

  Returns:
    The workdir as a Path.

  Raises:
    AeasdError: the workdir cannot be written, one of its files is damaged,
      or it holds a run of other settings that its checkpoints would not fit.
  """
  workdir = make_workdir(workdir)
  saved_path = workdir / CONFIG_FILE
  if saved_path.exists():
    # Only the identity settings: the others come from this run's config,
    # which may have settings that a workdir of an older version lacks.
    saved = _load_config(workdir, check=lambda settings: None)
    for setting in IDENTITY_SETTINGS:
      old, new = _get(saved, setting), _get(config, setting)
      if old != new:
        raise AeasdError(
          f"workdir {workdir} holds a run with {setting}={old}, but this"
          f" config has {new}; use another --workdir or the same settings"
        )
  if (workdir / GROUPS_FILE).exists():
    read_groups(workdir)
  read_thresholds(workdir)
  read_data_identity(workdir)
  return workdir


def record_run(workdir, config, group_names, data_identity):
  """Writes what a run is: its config, its groups, the data it trains on."""
  write_json(
    pathlib.Path(workdir) / CONFIG_FILE,
    json.loads(config.to_json()),
    indent=2,
    sort_keys=True,
  )
  write_json(pathlib.Path(workdir) / GROUPS_FILE, list(group_names))
  write_json(pathlib.Path(workdir) / DATA_FILE, data_identity, indent=2)


def read_data_identity(workdir):
  """data.json's {"fingerprint", "training_clips", "root"}; None if absent.

  Workdirs written before data.json existed have none.
  """
  path = pathlib.Path(workdir) / DATA_FILE
  if not path.exists():
    return None
  identity = read_json(path, dict, _DATA_HINT)
  if not (
    isinstance(identity.get("fingerprint"), str)
    and isinstance(identity.get("training_clips"), int)
  ):
    raise _damaged(
      path, "expected a fingerprint and a count of training clips", _DATA_HINT
    )
  return identity


def check_same_data(workdir, config, features, groups):
  """Refuses data other than what the workdir's run trained on.

  Compares the training clips' fingerprint (their paths below the data root
  and the digests of their bytes), so a moved or copied dataset passes and
  other audio under the same names does not.
  """
  stored = read_data_identity(workdir)
  if stored is None:
    log.warning(
      "workdir %s has no %s (written by an older version): cannot check"
      " that its data is the data it trained on",
      workdir,
      DATA_FILE,
    )
    return
  now = dataset.data_identity(config, features, groups)
  if now["fingerprint"] != stored["fingerprint"]:
    raise AeasdError(
      f"workdir {workdir} was trained on other data: its"
      f" {stored['training_clips']} training clips (under"
      f" {stored.get('root')}) differ from the {now['training_clips']} under"
      f" {now['root']} in their names or audio; expected the same dataset"
      " (a moved copy is fine), or use another --workdir"
    )


def load_config(workdir):
  """The ConfigDict a workdir was trained with.

  A setting added to configs/default.py after the workdir was written takes
  its default, with a warning; without them every new setting would make
  older workdirs unreadable. Identity settings are never filled in.

  Raises:
    AeasdError: config.json is missing, not JSON, or lacks a setting.
  """
  return _load_config(workdir, config_check.check_config, fill_defaults=True)


def _load_config(workdir, check, fill_defaults=False):
  """config.json, which must hold the identity settings and pass `check`."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  values = read_json(path, dict, _CONFIG_HINT)
  if fill_defaults:
    _fill_newer_settings(path, values)
  trail = []  # The dotted settings looked up, the failing one last.
  settings = _Settings(values, trail)
  try:
    for setting in IDENTITY_SETTINGS:
      config_check.lookup(settings, setting)
    check(settings)
  except KeyError:
    # Also what a workdir of a version without that setting gets.
    raise _damaged(
      path,
      f"no setting {trail[-1]}",
      "expected every setting"
      " configs/default.py has; add it, restore the file, or use"
      " another --workdir",
    ) from None
  except (AttributeError, TypeError) as e:
    where = f"at setting {trail[-1]}: " if trail else ""
    raise _damaged(path, f"{where}{e}", _CONFIG_HINT) from None
  except AeasdError as e:
    raise AeasdError(f"{path}: {e}") from None
  return ml_collections.ConfigDict(values)


def _fill_newer_settings(path, values):
  """Adds the default of each non-identity setting `values` lacks."""
  try:
    # configs/ sits beside the package, importable where the entry points
    # run; elsewhere nothing is filled in and a lack is reported as usual.
    defaults = importlib.import_module("configs.default").get_config()
  except ImportError:
    return
  added = []

  def fill(stored, default, prefix):
    for key, value in default.items():
      dotted = f"{prefix}{key}"
      if any(
        dotted == s or dotted.startswith(s + ".") for s in IDENTITY_SETTINGS
      ):
        continue
      if key not in stored:
        stored[key] = json.loads(dumps_json(_plain(value)))
        added.append(dotted)
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        stored[key], dict
      ):
        fill(stored[key], value, f"{dotted}.")

  fill(values, defaults, "")
  if added:
    log.warning(
      "%s lacks setting(s) added since it was written: %s; using today's"
      " defaults",
      path,
      ", ".join(added),
    )


def _plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    return json.loads(value.to_json())
  return value


class _Settings(dict):
  """A config's JSON object that notes the dotted setting each lookup asks.

  config_check reads settings by item and by attribute, as on a ConfigDict;
  this way a missing one is named in full (model.frames, not frames).
  """

  def __init__(self, values, trail, prefix=""):
    super().__init__(values)
    self._trail, self._prefix = trail, prefix

  def __getitem__(self, key):
    self._trail.append(f"{self._prefix}{key}")
    value = super().__getitem__(key)
    if isinstance(value, dict):
      return _Settings(value, self._trail, f"{self._prefix}{key}.")
    return value

  def __getattr__(self, key):
    if key.startswith("__"):
      raise AttributeError(key)
    return self[key]  # A missing setting raises KeyError, as reported.


def _get(config, dotted):
  value = config_check.lookup(config, dotted)
  if isinstance(value, ml_collections.ConfigDict):
    value = json.loads(value.to_json())
  # As written to config.json, where a non-finite float is null.
  return json.loads(dumps_json(value))
