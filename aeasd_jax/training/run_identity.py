"""What a workdir's run is, checked on every resume and evaluation.

Its config (identity settings that fix what the checkpoints mean, other
settings free to change) and the data it trained on (a fingerprint of the
training clips). A rerun that fails a check writes nothing.
"""

import importlib
import json
import logging

import ml_collections

from aeasd_jax.training import config_check
from aeasd_jax.data import dataset
from aeasd_jax.workdir import checkpoint
from aeasd_jax.workdir import file_io
from aeasd_jax.workdir import layout
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)

# Settings that fix the shape and meaning of a checkpoint; the others (epochs,
# logging, scoring) may change between a run and its resumption. Which data
# the run trains on is checked by its fingerprint (data.json), so a moved
# copy of the same data is the same run.
IDENTITY_SETTINGS = (
  "seed",
  "model",
  "features",
  "data.group_by",
  "data.machine_types",
  "data.use_eval_train",
  # A classifier's examples and classes: the weights' input and output.
  "data.clip_seconds",
  "data.labels",
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


def check_resume(workdir, config):
  """Creates the workdir, or checks that `config` may resume the run in it.

  Writes no file: a rerun that fails any check leaves the workdir as it was
  (record_run writes once every check has passed). Every JSON file the
  workdir holds is checked, so a damaged one stops the run before any
  training.

  Args:
    workdir: a layout.Workdir.
    config: the run's config.

  Raises:
    AeasdError: the workdir cannot hold checkpoints or be written, one of
      its files is damaged, or it holds a run of other settings that its
      checkpoints would not fit.
  """
  checkpoint.check_directory(workdir.checkpoints)
  workdir.make()
  if workdir.config_file.exists():
    # Only the identity settings: the others come from this run's config,
    # which may have settings that a workdir of an older version lacks.
    saved = _load_config(workdir, check=lambda settings: None)
    for setting in IDENTITY_SETTINGS:
      difference = _first_difference(
        setting, _get(saved, setting), _get(config, setting)
      )
      if difference:
        dotted, old, new = difference
        raise AeasdError(
          f"workdir {workdir} holds a run with {dotted}={old!r}, but this"
          f" config has {dotted}={new!r}; use another --workdir or the same"
          " settings"
        )
  if workdir.groups_file.exists():
    workdir.read_groups()
  workdir.read_thresholds()
  workdir.read_data_identity()


def record_run(workdir, config, group_names, data_identity, class_names=()):
  """Writes what a run is: its config, its groups (and a classifier's
  classes), the data it trains on."""
  workdir.write_config_values(json.loads(config.to_json()))
  workdir.write_groups(group_names)
  if class_names:
    workdir.write_classes(class_names)
  workdir.write_data_identity(data_identity)


def check_same_data(workdir, config, features, groups):
  """Refuses data other than what the workdir's run trained on.

  Compares the training clips' fingerprint (their paths below the data root
  and the digests of their bytes), so a moved or copied dataset passes and
  other audio under the same names does not.
  """
  stored = workdir.read_data_identity()
  if stored is None:
    log.warning(
      "workdir %s has no %s (written by an older version): cannot check"
      " that its data is the data it trained on",
      workdir,
      workdir.data_file.name,
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


def load_config(workdir, cache_dir=None):
  """The ConfigDict a workdir was trained with.

  A setting added to configs/default.py after the workdir was written takes
  its default, with a warning; without them every new setting would make
  older workdirs unreadable. A lacking section or seed is damage.

  Args:
    workdir: the run's folder.
    cache_dir: the --cache_dir flag: in place of data.cache_dir (a copied
      workdir's cache on its new machine); config.json is not changed.

  Raises:
    AeasdError: config.json is missing, not JSON, or lacks a setting.
  """
  return _load_config(
    layout.Workdir(workdir), config_check.check_config, cache_dir
  )


def _load_config(workdir, check, cache_dir=None):
  """config.json, which must hold the identity settings and pass `check`."""
  path = workdir.config_file
  values = workdir.read_config_values(_CONFIG_HINT)
  _fill_newer_settings(path, values)
  if cache_dir is not None and isinstance(values.get("data"), dict):
    values["data"]["cache_dir"] = cache_dir
  trail = []  # The dotted settings looked up, the failing one last.
  settings = _Settings(values, trail)
  try:
    for setting in IDENTITY_SETTINGS:
      config_check.lookup(settings, setting)
    check(settings)
  except KeyError:
    # Also what a workdir of a version without that setting gets.
    raise file_io.damaged(
      path,
      f"no setting {trail[-1]}",
      "expected every setting"
      " configs/default.py has; add it, restore the file, or use"
      " another --workdir",
    ) from None
  except (AttributeError, TypeError) as e:
    where = f"at setting {trail[-1]}: " if trail else ""
    raise file_io.damaged(path, f"{where}{e}", _CONFIG_HINT) from None
  except AeasdError as e:
    raise AeasdError(f"{path}: {e}") from None
  return ml_collections.ConfigDict(values)


def _fill_newer_settings(path, values):
  """Adds today's default of each setting that `values` lacks in a section.

  A new setting's default keeps the behaviour from before it existed (the
  rule for adding one), so an older workdir reads, resumes and evaluates as
  it was trained. A lacking section, or a lacking top-level identity setting
  such as seed, is damage, not age, and is left for the checks to name.
  """
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
      section = isinstance(value, ml_collections.ConfigDict)
      if not prefix and (section or dotted in IDENTITY_SETTINGS):
        if key in stored and section and isinstance(stored[key], dict):
          fill(stored[key], value, f"{dotted}.")
        continue
      if key not in stored:
        stored[key] = json.loads(file_io.dumps_json(_plain(value)))
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


def _first_difference(dotted, old, new):
  """(setting, old, new) of the first leaf setting that differs, or None.

  Sections are compared leaf by leaf, in sorted order, so a message names
  model.hidden rather than printing the whole model section twice.
  """
  if isinstance(old, dict) and isinstance(new, dict):
    for key in sorted(set(old) | set(new)):
      found = _first_difference(
        f"{dotted}.{key}", old.get(key, _ABSENT), new.get(key, _ABSENT)
      )
      if found:
        return found
    return None
  return None if old == new else (dotted, old, new)


class _Absent:
  """A setting one of two configs lacks."""

  def __repr__(self):
    return "(no such setting)"


_ABSENT = _Absent()


def _get(config, dotted):
  value = config_check.lookup(config, dotted)
  if isinstance(value, ml_collections.ConfigDict):
    value = json.loads(value.to_json())
  # As written to config.json, where a non-finite float is null.
  return json.loads(file_io.dumps_json(value))
