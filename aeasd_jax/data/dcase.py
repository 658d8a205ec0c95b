"""The DCASE Task 2 layouts of 2020 to 2026: finding clips, parsing names.

2020 names a clip by machine id (`normal_id_00_00000000.wav`); every year
since by section and domain (`section_00_source_train_normal_0000_vel_6.wav`).
"""

import csv
import dataclasses
import os
import pathlib
import re

from aeasd_jax import runtime
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown

YEARS = tuple(range(2020, 2027))
AUDIO_SUFFIXES = (".wav", ".flac")
# Label of an eval test clip, whose name does not tell.
UNLABELLED = -1
DOMAINS = ("source", "target")
# The official baseline's folders hold the types one level down, in raw/.
RAW_FOLDER = "raw"
# DCASE 2025 on: clips that are neither train nor test (machine or noise
# alone), which the official baseline does not train on.
SUPPLEMENTAL_FOLDER = "supplemental"

_ID_NAME = re.compile(r"^(?P<label>normal|anomaly)_(?P<section>id_\d+)_\d+$")
_ID_BLIND = re.compile(r"^(?P<section>id_\d+)_\d+$")
# The attributes are key-value pairs (`_vel_12_loc_B`), `_noAttribute`, or
# an empty `_` (2025); 2021 test names had none. The number is opaque: 2020
# has 8 digits, 2024 starts some types at 0001. The split is optional because
# 2024's RoboticArm names lack it (`section_00_source_normal_0035_...`).
_SECTION_NAME = re.compile(
  r"^(?P<section>section_\d+)_(?P<domain>source|target)_"
  r"(?:(?P<split>train|test)_)?(?P<label>normal|anomaly)_\d+"
  r"(?:_(?P<attributes>.*))?$"
)
# 2025's supplemental clips (`section_00_machine_0001_`): a section, then
# anything.
_SUPPLEMENTAL_NAME = re.compile(r"^(?P<section>section_\d+)_")
# 2021 kept the domain in a blind eval name; 2022 on, the ground truth's
# ground_truth_domain/ tells it.
_SECTION_BLIND_2021 = re.compile(
  r"^(?P<section>section_\d+)_(?P<domain>source|target)_test_\d+$"
)
_SECTION_BLIND = re.compile(r"^(?P<section>section_\d+)_\d+$")


@dataclasses.dataclass(frozen=True)
class NameRules:
  """How one year names labelled clips and blind eval test clips."""

  labelled: re.Pattern
  blind: re.Pattern
  labelled_form: str  # The patterns as an error message shows them.
  blind_form: str


_ID_RULES = NameRules(
  _ID_NAME,
  _ID_BLIND,
  "normal_id_XX_######## or anomaly_id_XX_########",
  "id_XX_########",
)
_SECTION_FORM = (
  "section_XX_(source|target)_(train|test)_(normal|anomaly)_NNNN[_attributes]"
)
_RULES_2021 = NameRules(
  _SECTION_NAME,
  _SECTION_BLIND_2021,
  _SECTION_FORM,
  "section_XX_(source|target)_test_NNNN",
)
_SECTION_RULES = NameRules(
  _SECTION_NAME, _SECTION_BLIND, _SECTION_FORM, "section_XX_NNNN"
)


def name_rules(year):
  """The naming rules of DCASE Task 2 in `year`."""
  if year == 2020:
    return _ID_RULES
  return _RULES_2021 if year == 2021 else _SECTION_RULES


@dataclasses.dataclass(frozen=True)
class Clip:
  """One audio file and what its path says about it."""

  path: str
  machine_type: str
  # The unit each result row is for: "id_XX" (2020) or "section_XX".
  section: str
  label: int  # 0 normal, 1 anomaly, UNLABELLED for blind eval test clips.
  split: str  # "train" or "test".
  subset: str  # "dev" or "eval".
  # "source" or "target"; "" in 2020 and where a blind name does not tell.
  domain: str = ""
  attributes: str = ""  # The name's attribute part, e.g. "vel_12_loc_B".

  @property
  def name(self):
    return os.path.basename(self.path)


def parse_clip(path, machine_type, split, subset, *, year=2020, domain=""):
  """Makes a Clip from a path, or raises AeasdError naming the file.

  Args:
    path: the file.
    machine_type: its type folder.
    split: "train" or "test", from its folder.
    subset: "dev" or "eval", from its folder.
    year: whose naming rules apply.
    domain: the domain its folder implies (2021's source_test/ and
      target_test/), which the name must agree with; "" when the folder
      does not tell.
  """
  rules = name_rules(year)
  stem, _ = os.path.splitext(os.path.basename(path))
  blind_allowed = split == "test" and subset == "eval"
  match = rules.labelled.match(stem)
  label = UNLABELLED
  if match:
    label = 1 if match["label"] == "anomaly" else 0
  elif blind_allowed:
    match = rules.blind.match(stem)
  if not match or (match.groupdict().get("split") or split) != split:
    expected = (
      f"{rules.labelled_form} or {rules.blind_form}"
      if blind_allowed
      else rules.labelled_form
    )
    raise AeasdError(
      f"{path}: cannot parse the file name as DCASE {year} names a {split}"
      f" clip; expected {expected} (config.data.dcase_year picks the"
      " year's names)"
    )
  found = match.groupdict().get("domain") or ""
  if domain and found and found != domain:
    raise AeasdError(
      f"{path}: a {found} clip in a {domain}_test folder; expected the"
      f" clips of the {domain} domain only"
    )
  return Clip(
    os.fspath(path),
    machine_type,
    match["section"],
    label,
    split,
    subset,
    found or domain,
    match.groupdict().get("attributes") or "",
  )


def section_in_name(path):
  """The section ("id_XX" or "section_XX") a clip's file name gives, or None.

  Any year's labelled or blind names, read as parse_clip reads them: for a
  recording whose year no folder tells.
  """
  stem, _ = os.path.splitext(os.path.basename(path))
  for rules in (_ID_RULES, _RULES_2021, _SECTION_RULES):
    match = rules.labelled.match(stem) or rules.blind.match(stem)
    if match:
      return match["section"]
  return None


def _hidden(name):
  """A name no DCASE layout holds: .DS_Store, macOS's ._*.wav, .git/.

  The official baselines' globs (`*.wav`, `*/`) skip them too.
  """
  return name.startswith(".")


def audio_files(folder, *, recursive=False):
  """The .wav and .flac entries of `folder` (and below it if `recursive`).

  Every entry with an audio suffix that is not a folder is listed, dangling
  symbolic links included, so reading it reports a broken clip as a bad file
  instead of the clip vanishing from the dataset unnoticed. Hidden entries,
  and everything in hidden folders (.ipynb_checkpoints/), are left out.

  Returns:
    A sorted list of pathlib.Path.
  """
  folder = pathlib.Path(folder)
  entries = folder.rglob("*") if recursive else folder.iterdir()
  return sorted(
    p
    for p in entries
    if p.suffix.lower() in AUDIO_SUFFIXES
    and not any(_hidden(part) for part in p.relative_to(folder).parts)
    and not p.is_dir()
  )


def _type_names(folder):
  """The machine type folders in `folder`, hidden ones left out, sorted.

  Raises:
    AeasdError: a type folder's name is not valid UTF-8, which no result
      file, cache key or JSON file could hold.
  """
  names = sorted(
    p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p.name)
  )
  for name in names:
    if not runtime.is_utf8(name):
      raise AeasdError(
        f"{shown(folder / name)}: the machine type folder's name is not"
        " valid UTF-8; expected a UTF-8 name (rename the folder)"
      )
  return names


def type_folders(root, subset_dir):
  """The folder that holds `subset_dir`'s machine type folders.

  `<root>/<subset_dir>/`, or `<root>/<subset_dir>/raw/` as the official
  2023+ baseline downloads them; None when `<root>/<subset_dir>` is absent.
  """
  folder = pathlib.Path(root) / subset_dir
  if not folder.is_dir():
    return None
  raw = folder / RAW_FOLDER
  if raw.is_dir() and not (raw / "train").is_dir():
    return raw
  return folder


def machine_types_in(root, dev_dir="dev_data"):
  """The machine types under `<root>/<dev_dir>` (or its raw/), sorted."""
  dev = type_folders(root, dev_dir)
  if dev is None:
    raise AeasdError(
      f"data root {root}: no folder {dev_dir}/ inside; expected the DCASE"
      f" layout <root>/{dev_dir}/<type>/{{train,test}}/*.wav (or"
      f" <root>/{dev_dir}/raw/<type>/...)"
    )
  types = _type_names(dev)
  if not types:
    raise AeasdError(f"{dev}: holds no machine type folders")
  return types


def all_machine_types(root, dev_dir="dev_data", eval_dir="eval_data"):
  """The types of the dev folder and of the eval folder, sorted.

  From 2023 the eval set holds other machine types than the dev set (their
  training clips are in eval_data/<type>/train); in 2020-2022 both hold the
  same.
  """
  types = set(machine_types_in(root, dev_dir))
  base = type_folders(root, eval_dir)
  if base is not None:
    types |= set(_type_names(base))
  return sorted(types)


def detect_year(root, dev_dir="dev_data"):
  """The DCASE year whose names the dev training clips follow, or None.

  2020 (ids) and 2021 (its source_test/ and target_test/ folders) are told
  apart from the rest; 2022 to 2026 name their clips alike and score them
  alike, so any of them gives 2022. None: no name fits any year.
  """
  dev = type_folders(root, dev_dir)
  for machine_type in machine_types_in(root, dev_dir):
    train = dev / machine_type / "train"
    files = audio_files(train) if train.is_dir() else []
    if not files:
      continue
    stem = os.path.splitext(files[0].name)[0]
    if _ID_NAME.match(stem):
      return 2020
    if _SECTION_NAME.match(stem):
      split_tests = any(
        (dev / t / f"{d}_test").is_dir()
        for t in machine_types_in(root, dev_dir)
        for d in DOMAINS
      )
      return 2021 if split_tests else 2022
    return None
  return None


def _test_folders(type_folder, year):
  """(folder, domain) of a type's test clips: test/, or 2021's pair."""
  split = [(type_folder / f"{d}_test", d) for d in DOMAINS]
  if year >= 2021 and any(f.is_dir() for f, _ in split):
    return [(f, d) for f, d in split if f.is_dir()]
  return [(type_folder / "test", "")]


def discover(
  root,
  machine_types=(),
  dev_dir="dev_data",
  eval_dir="eval_data",
  *,
  year=2020,
  use_supplemental=False,
):
  """Lists every clip of the given machine types (all types when empty).

  The dev folder must hold train and test clips for each of its types. The
  eval folder is optional: its train clips are DCASE's additional training
  data (from 2023, of its own machine types) and its test clips are
  unlabelled unless a ground truth labels them later.

  Args:
    root: the dataset folder.
    machine_types: the types to list; empty for all.
    dev_dir, eval_dir: the subset folders' names.
    year: the DCASE year whose names the files follow.
    use_supplemental: also train on each type's supplemental/ clips (2025+),
      which are left out, with a message, otherwise.

  Returns:
    A list of Clip, sorted by subset, type, split and name.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise AeasdError(f"data root {root} does not exist or is not a folder")
  if not runtime.is_utf8(root):
    # Every clip's path goes into the cache's keys and JSON files.
    raise AeasdError(
      f"data root {shown(root)}: not valid UTF-8; expected a UTF-8 path"
      " (rename the folder)"
    )
  found = all_machine_types(root, dev_dir, eval_dir)
  dev_types = machine_types_in(root, dev_dir)
  # Sorted and deduplicated: a type named twice would list its clips twice.
  types = sorted(set(machine_types)) or found
  missing = sorted(set(types) - set(found))
  if missing:
    raise AeasdError(
      f"{type_folders(root, dev_dir)}: no folder for machine type(s)"
      f" {missing}; found {found}"
    )
  clips = []
  for subset, subset_dir in (("dev", dev_dir), ("eval", eval_dir)):
    base = type_folders(root, subset_dir)
    for machine_type in types:
      type_folder = base / machine_type if base else None
      # A type of one set only (the eval set's own types from 2023).
      if subset == "dev" and machine_type not in dev_types:
        continue
      if subset == "eval" and (not type_folder or not type_folder.is_dir()):
        continue
      places = [(type_folder / "train", "train", "")]
      places += [(f, "test", d) for f, d in _test_folders(type_folder, year)]
      listed = _listed_attributes(type_folder)
      for folder, split, domain in places:
        clips.extend(
          _with_listed_attributes(clip, listed)
          for clip in _folder_clips(
            folder, machine_type, split, subset, year, domain
          )
        )
      supplemental = type_folder / SUPPLEMENTAL_FOLDER
      if use_supplemental and supplemental.is_dir():
        clips.extend(
          _supplemental_clip(f, machine_type, subset)
          for f in audio_files(supplemental)
        )
  _check_sections_disjoint(clips, year)
  return clips


def _folder_clips(folder, machine_type, split, subset, year, domain):
  if not folder.is_dir():
    if subset == "dev":
      raise AeasdError(
        f"{folder}: missing; expected the {split} clips of {machine_type}"
      )
    return []
  files = audio_files(folder)
  if not files:
    raise AeasdError(
      f"{folder}: no .wav or .flac files; expected the"
      f" {split} clips of {machine_type}"
    )
  return [
    parse_clip(f, machine_type, split, subset, year=year, domain=domain)
    for f in files
  ]


def _listed_attributes(type_folder):
  """{file name: attributes} from a type's attributes_XX.csv files (2022+).

  Their rows are `<type>/<split>/<name>,d1p,d1v[,d2p,d2v...]` under a
  `file_name,d1p,d1v,...` header; the attributes are the values joined as
  the names join them, e.g. "vel_6_loc_A".
  """
  listed = {}
  for path in sorted(type_folder.glob("attributes_*.csv")):
    try:
      with open(path, newline="") as f:
        header, *rows = list(csv.reader(f)) or [[]]
    except (OSError, UnicodeDecodeError) as e:
      raise AeasdError(f"{path}: cannot read it ({e})") from None
    if header[:1] != ["file_name"]:
      raise AeasdError(
        f"{path}: header {header}; expected file_name,d1p,d1v,..."
      )
    columns = [i for i, h in enumerate(header) if re.fullmatch(r"d\d+[pv]", h)]
    for row in rows:
      if row:
        values = [row[i] for i in columns if i < len(row) and row[i]]
        listed[os.path.basename(row[0])] = "_".join(values)
  return listed


def _with_listed_attributes(clip, listed):
  # A name's own attributes stand; a list fills those a name hides
  # (2024's `noAttribute`) or lacks (blind names).
  if clip.attributes in ("", "noAttribute") and listed.get(clip.name):
    return dataclasses.replace(clip, attributes=listed[clip.name])
  return clip


def _supplemental_clip(path, machine_type, subset):
  """A supplemental clip, trained on as a normal source-domain clip."""
  match = _SUPPLEMENTAL_NAME.match(os.path.basename(path))
  if not match:
    raise AeasdError(
      f"{path}: cannot parse the file name of a supplemental clip; expected"
      " section_XX_<anything>"
    )
  return Clip(
    os.fspath(path), machine_type, match["section"], 0, "train", subset
  )


def supplemental_folders(root, machine_types, dev_dir, eval_dir):
  """The supplemental/ folders under the given types, to mention them."""
  folders = []
  for subset_dir in (dev_dir, eval_dir):
    base = type_folders(root, subset_dir)
    if base is not None:
      folders += [
        base / t / SUPPLEMENTAL_FOLDER
        for t in machine_types
        if (base / t / SUPPLEMENTAL_FOLDER).is_dir()
      ]
  return folders


def _check_sections_disjoint(clips, year):
  # DCASE keeps dev and eval ids (sections) apart; a shared one would
  # silently merge two machines into one group and one result row.
  units = {"dev": set(), "eval": set()}
  for clip in clips:
    units[clip.subset].add((clip.machine_type, clip.section))
  shared = sorted(units["dev"] & units["eval"])
  if shared:
    shown = ", ".join(f"{t}/{s}" for t, s in shared)
    what = "machine ids" if year == 2020 else "sections"
    raise AeasdError(
      f"{what} appear in both the dev and eval folders:"
      f" {shown}; expected disjoint {what} as in DCASE {year}"
    )
