"""The DCASE 2020 Task 2 folder layout: finding clips and parsing their names.

`<root>/<dev_dir>/<type>/{train,test}/` and the same under `<eval_dir>`; the
folder names are settings so AE-ASD's `dataset/` and `eval_dataset/` work.
"""

import dataclasses
import os
import pathlib
import re

from aeasd_jax.errors import AeasdError

AUDIO_SUFFIXES = (".wav", ".flac")
LABELLED_NAME = re.compile(r"^(normal|anomaly)_(id_\d+)_\d+$")
UNLABELLED_NAME = re.compile(r"^(id_\d+)_\d+$")
# Label of an eval test clip, whose name does not tell.
UNLABELLED = -1


@dataclasses.dataclass(frozen=True)
class Clip:
  """One audio file and what its path says about it."""

  path: str
  machine_type: str
  machine_id: str  # "id_XX", as in the file name.
  label: int  # 0 normal, 1 anomaly, UNLABELLED for eval test clips.
  split: str  # "train" or "test".
  section: str  # "dev" or "eval".

  @property
  def name(self):
    return os.path.basename(self.path)


def parse_clip(path, machine_type, split, section):
  """Makes a Clip from a path, or raises AeasdError naming the file."""
  stem, _ = os.path.splitext(os.path.basename(path))
  match = LABELLED_NAME.match(stem)
  if match:
    label = 1 if match.group(1) == "anomaly" else 0
    return Clip(
      os.fspath(path), machine_type, match.group(2), label, split, section
    )
  match = UNLABELLED_NAME.match(stem)
  if match and split == "test" and section == "eval":
    return Clip(
      os.fspath(path), machine_type, match.group(1), UNLABELLED, split, section
    )
  expected = (
    "normal_id_XX_########, anomaly_id_XX_######## or id_XX_########"
    if section == "eval" and split == "test"
    else "normal_id_XX_######## or anomaly_id_XX_########"
  )
  raise AeasdError(f"{path}: cannot parse the file name; expected {expected}")


def audio_files(folder, *, recursive=False):
  """The .wav and .flac entries of `folder` (and below it if `recursive`).

  Every entry with an audio suffix that is not a folder is listed, dangling
  symbolic links included, so reading it reports a broken clip as a bad file
  instead of the clip vanishing from the dataset unnoticed.

  Returns:
    A sorted list of pathlib.Path.
  """
  folder = pathlib.Path(folder)
  entries = folder.rglob("*") if recursive else folder.iterdir()
  return sorted(
    p for p in entries if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_dir()
  )


def machine_types_in(root, dev_dir="dev_data"):
  """The machine types under `<root>/<dev_dir>`, sorted."""
  dev = pathlib.Path(root) / dev_dir
  if not dev.is_dir():
    raise AeasdError(
      f"data root {root}: no folder {dev_dir}/ inside; expected the DCASE"
      f" layout <root>/{dev_dir}/<type>/{{train,test}}/*.wav"
    )
  types = sorted(p.name for p in dev.iterdir() if p.is_dir())
  if not types:
    raise AeasdError(f"{dev}: holds no machine type folders")
  return types


def discover(root, machine_types=(), dev_dir="dev_data", eval_dir="eval_data"):
  """Lists every clip of the given machine types (all types when empty).

  The dev folder must hold train and test clips for each type. The eval folder
  is optional: its train clips are DCASE's additional training data and its
  test clips are unlabelled unless a ground-truth list labels them later.

  Returns:
    A list of Clip, sorted by section, type, split and name.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise AeasdError(f"data root {root} does not exist or is not a folder")
  found = machine_types_in(root, dev_dir)
  # Sorted and deduplicated: a type named twice would list its clips twice.
  types = sorted(set(machine_types)) or found
  missing = sorted(set(types) - set(found))
  if missing:
    raise AeasdError(
      f"{root / dev_dir}: no folder for machine type(s)"
      f" {missing}; found {found}"
    )
  clips = []
  for section, section_dir in (("dev", dev_dir), ("eval", eval_dir)):
    for machine_type in types:
      for split in ("train", "test"):
        folder = root / section_dir / machine_type / split
        if not folder.is_dir():
          if section == "dev":
            raise AeasdError(
              f"{folder}: missing; expected the {split} clips of {machine_type}"
            )
          continue
        files = audio_files(folder)
        if not files:
          raise AeasdError(
            f"{folder}: no .wav or .flac files; expected the"
            f" {split} clips of {machine_type}"
          )
        clips.extend(parse_clip(f, machine_type, split, section) for f in files)
  _check_ids_disjoint(clips)
  return clips


def _check_ids_disjoint(clips):
  # DCASE keeps dev and eval machine ids apart; a shared id would silently
  # merge two machines into one group and one result row.
  ids = {"dev": set(), "eval": set()}
  for clip in clips:
    ids[clip.section].add((clip.machine_type, clip.machine_id))
  shared = sorted(ids["dev"] & ids["eval"])
  if shared:
    shown = ", ".join(f"{t}/{i}" for t, i in shared)
    raise AeasdError(
      f"machine ids appear in both the dev and eval folders:"
      f" {shown}; expected disjoint ids as in DCASE 2020"
    )
