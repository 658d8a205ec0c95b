"""A workdir: one class that names every file a run keeps, and its format.

Modules that read or write a workdir take a Workdir, never a string, so a
reader learns what a workdir holds from this class alone.
"""

import contextlib
import math
import os
import pathlib
import secrets
import shutil

import jax

from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import file_io

_GROUPS_HINT = "delete it and rerun train.py, which writes it again"
_THRESHOLDS_HINT = (
  "delete it; train.py and evaluate.py fit the thresholds again"
)
_DATA_HINT = (
  "delete it and rerun train.py to write it again (its data is then taken"
  " on trust)"
)

# In each results/<method>/ folder: what its files are of.
EVALUATION_FILE = "evaluation.json"


class Workdir:
  """A run's folder and the files in it.

  config.json      the run's settings (strict JSON), written once the run's
                   checks pass; evaluate.py reads the run from it.
  groups.json      the groups (machine type or section) in model order.
  classes.json     a classifier's classes, in label order.
  data.json        the fingerprint of the data the run trained on.
  thresholds.json  {weights tag: the decision threshold fitted per group},
                   and under "<tag> windows" the window thresholds of
                   --wav's segments.
  metrics.jsonl    one JSON record per epoch, evaluation and timing.
  checkpoints/     Orbax steps (epochs) of the stacked training state.
  mahalanobis/     <weights digest>.npz: the Mahalanobis statistics of
                   those weights.
  neighbours/      <weights digest>.npz: a classifier's training embeddings
                   for its nearest-neighbour score.
  results/         evaluate.py's files: a folder per score method (mse,
                   mahalanobis), all from one evaluation, which its
                   evaluation.json describes (README: "What evaluate.py
                   writes"); recordings/ holds --wav --plots figures.
  workdir.lock     held by the train.py that runs in the workdir.

  JSON files are written atomically (file_io) and checked when read, so a
  damaged one is named before any work depends on it.
  """

  def __init__(self, path):
    self.path = pathlib.Path(path).expanduser()

  def __fspath__(self):
    return os.fspath(self.path)

  def __str__(self):
    return str(self.path)

  @property
  def config_file(self):
    return self.path / "config.json"

  @property
  def groups_file(self):
    return self.path / "groups.json"

  @property
  def classes_file(self):
    return self.path / "classes.json"

  @property
  def data_file(self):
    return self.path / "data.json"

  @property
  def thresholds_file(self):
    return self.path / "thresholds.json"

  @property
  def metrics_file(self):
    return self.path / "metrics.jsonl"

  @property
  def checkpoints(self):
    # Orbax wants an absolute path.
    return self.path.absolute() / "checkpoints"

  @property
  def mahalanobis(self):
    return self.path / "mahalanobis"

  def mahalanobis_file(self, weights_digest):
    return self.mahalanobis / f"{weights_digest}.npz"

  def neighbours_file(self, weights_digest):
    return self.path / "neighbours" / f"{weights_digest}.npz"

  @property
  def results(self):
    return self.path / "results"

  def results_for(self, method):
    return self.results / method

  @property
  def recording_plots(self):
    """evaluate.py --wav --plots: one PNG per recording."""
    return self.results / "recordings"

  def evaluation_file(self, method):
    """What made results/<method>/: weights, score, ground truth."""
    return self.results_for(method) / EVALUATION_FILE

  @contextlib.contextmanager
  def new_results(self, method):
    """An empty folder that replaces results/<method> if the block succeeds.

    The folder is built beside it under a hidden name and renamed in, so
    results/<method> holds one evaluation's files, never a mix of two; a
    crash leaves the previous complete folder. Only process 0 renames it
    in: every process computes the same files, and the others write none
    (file_io.write_text).

    Raises:
      AeasdError: results/ or results/<method> is not a folder, or cannot
        be written.
    """
    final = self.results_for(method)
    for path, what in (
      (self.results, "evaluate.py's results"),
      (final, f"evaluate.py's results of the {method} score"),
    ):
      if path.exists() and not path.is_dir():
        raise AeasdError(
          f"{path}: a file, not a folder; expected the folder of {what}"
          " (move or delete the file)"
        )
    building = self.results / f".{method}.partial-{secrets.token_hex(6)}"
    try:
      building.mkdir(parents=True)
    except OSError as e:
      raise file_io.write_error(building, e) from None
    try:
      yield building
      if jax.process_index() == 0:
        _rename_in(building, final)
    finally:
      shutil.rmtree(building, ignore_errors=True)

  @property
  def lock_file(self):
    return self.path / "workdir.lock"

  def make(self):
    """Creates the folder if needed; returns self.

    Raises:
      AeasdError: it cannot be created or written.
    """
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise AeasdError(
        f"workdir {self.path}: cannot create it ({e.strerror});"
        " expected a writable location"
      ) from None
    if not os.access(self.path, os.W_OK):
      raise AeasdError(
        f"workdir {self.path}: not writable; expected a folder this user"
        " can write"
      )
    return self

  def read_config_values(self, hint):
    """config.json as a dict; `hint` says what to do if it is damaged."""
    return file_io.read_json(self.config_file, dict, hint)

  def write_config_values(self, values):
    file_io.write_json(self.config_file, values, indent=2, sort_keys=True)

  def read_groups(self):
    """The group names in groups.json, in model order."""
    groups = file_io.read_json(self.groups_file, list, _GROUPS_HINT)
    if not all(isinstance(g, str) for g in groups):
      raise file_io.damaged(
        self.groups_file, "expected a list of group names", _GROUPS_HINT
      )
    return groups

  def write_groups(self, names):
    file_io.write_json(self.groups_file, list(names))

  def read_classes(self):
    """A classifier's class names in classes.json, in label order."""
    classes = file_io.read_json(self.classes_file, list, _GROUPS_HINT)
    if not all(isinstance(c, str) for c in classes):
      raise file_io.damaged(
        self.classes_file, "expected a list of class names", _GROUPS_HINT
      )
    return classes

  def write_classes(self, names):
    file_io.write_json(self.classes_file, list(names))

  def read_data_identity(self):
    """data.json's {"fingerprint", "training_clips", "root"}; None if absent.

    Workdirs written before data.json existed have none.
    """
    if not self.data_file.exists():
      return None
    identity = file_io.read_json(self.data_file, dict, _DATA_HINT)
    if not (
      isinstance(identity.get("fingerprint"), str)
      and isinstance(identity.get("training_clips"), int)
    ):
      raise file_io.damaged(
        self.data_file,
        "expected a fingerprint and a count of training clips",
        _DATA_HINT,
      )
    return identity

  def write_data_identity(self, identity):
    file_io.write_json(self.data_file, identity, indent=2)

  def read_thresholds(self):
    """thresholds.json: {tag: {"percentile", "pooling", "thresholds"}}.

    Returns:
      {} when the file does not exist yet. A threshold stored as null (it
      was not finite) comes back as NaN, which flags no clip as anomalous.
    """
    path = self.thresholds_file
    if not path.exists():
      return {}
    stored = file_io.read_json(path, dict, _THRESHOLDS_HINT)
    for tag, entry in stored.items():
      if not (
        isinstance(entry, dict)
        and _is_number(entry.get("percentile"))
        and isinstance(entry.get("pooling"), str)
        and isinstance(entry.get("thresholds"), dict)
        and all(
          v is None or _is_number(v) for v in entry["thresholds"].values()
        )
      ):
        raise file_io.damaged(
          path,
          f"entry {tag!r} is not an object of percentile,"
          " pooling and numeric thresholds",
          _THRESHOLDS_HINT,
        )
      entry["thresholds"] = {
        g: math.nan if v is None else v for g, v in entry["thresholds"].items()
      }
    return stored

  def write_thresholds(self, stored):
    file_io.write_json(self.thresholds_file, stored, indent=2, sort_keys=True)


def _rename_in(folder, final):
  """Replaces `final` by `folder` by renames: a crash leaves one of them.

  Raises:
    AeasdError: a rename failed; `final` is put back as it was.
  """
  old = final.with_name(f".{final.name}.old-{secrets.token_hex(6)}")
  had_old = final.exists()
  try:
    if had_old:
      os.rename(final, old)
    os.rename(folder, final)
  except OSError as e:
    if had_old and not final.exists():
      with contextlib.suppress(OSError):
        os.rename(old, final)
    raise file_io.write_error(final, e) from None
  shutil.rmtree(old, ignore_errors=True)


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)
