"""Tests for aeasd_jax.dcase: the DCASE folder layout and clip file names."""

import collections
import os
import pathlib
import re
import shutil

import pytest

import helpers
from aeasd_jax.data import dcase
from aeasd_jax import synth
from aeasd_jax.errors import AeasdError


def _minimal(root, machine_type="fan", dev_id="00", eval_id=None):
  files = [
    f"dev_data/{machine_type}/train/normal_id_{dev_id}_00000000.wav",
    f"dev_data/{machine_type}/test/normal_id_{dev_id}_00000000.wav",
    f"dev_data/{machine_type}/test/anomaly_id_{dev_id}_00000000.wav",
  ]
  if eval_id is not None:
    files += [
      f"eval_data/{machine_type}/train/normal_id_{eval_id}_00000000.wav",
      f"eval_data/{machine_type}/test/id_{eval_id}_00000000.wav",
    ]
  return helpers.make_tree(root, files)


def _raises(*patterns):
  """pytest.raises for an AeasdError whose message holds every pattern."""
  lookaheads = "".join(f"(?=.*{p})" for p in patterns)
  return pytest.raises(AeasdError, match=f"(?s)^{lookaheads}")


def _relative(clips, root):
  """Each clip with its path cut to <type>/<split>/<name>, to compare roots."""
  return [
    (
      os.path.relpath(c.path, root).split(os.sep)[1:],
      c.machine_type,
      c.section,
      c.label,
      c.split,
      c.subset,
    )
    for c in clips
  ]


def test_discover_tiny_root(tiny_root):
  clips = dcase.discover(tiny_root)
  assert {c.machine_type for c in clips} == set(synth.MACHINE_TYPES)
  assert len(set(clips)) == len(clips)
  on_disk = sorted(str(p) for p in pathlib.Path(tiny_root).rglob("*.wav"))
  assert sorted(c.path for c in clips) == on_disk
  for clip in clips:
    path = pathlib.Path(clip.path)
    assert path.is_file()
    assert clip.name == path.name
    assert clip.split == path.parent.name
    assert clip.machine_type == path.parent.parent.name
    assert (
      path.parent.parent.parent.name
      == {"dev": "dev_data", "eval": "eval_data"}[clip.subset]
    )
    assert re.fullmatch(r"id_\d\d", clip.section)
    assert clip.section in clip.name
    if clip.name.startswith("normal_"):
      assert clip.label == 0
    elif clip.name.startswith("anomaly_"):
      assert clip.label == 1
    else:
      assert re.fullmatch(r"id_\d\d_\d{8}\.wav", clip.name)
      assert (clip.subset, clip.split) == ("eval", "test")
      assert clip.label == dcase.UNLABELLED
  # Every type has each section/split, and labels only where they belong.
  seen = collections.defaultdict(set)
  for c in clips:
    seen[c.machine_type].add((c.subset, c.split, c.label))
  for machine_type in synth.MACHINE_TYPES:
    assert seen[machine_type] == {
      ("dev", "train", 0),
      ("dev", "test", 0),
      ("dev", "test", 1),
      ("eval", "train", 0),
      ("eval", "test", dcase.UNLABELLED),
    }
  ids = {(c.subset, c.section) for c in clips}
  assert ids == (
    {("dev", f"id_{i:02d}") for i in synth.DEV_IDS}
    | {("eval", f"id_{i:02d}") for i in synth.EVAL_IDS}
  )


def test_discover_order_is_sorted(tiny_root):
  clips = dcase.discover(tiny_root)
  section_rank = {"dev": 0, "eval": 1}
  split_rank = {"train": 0, "test": 1}
  keys = [
    (section_rank[c.subset], c.machine_type, split_rank[c.split], c.name)
    for c in clips
  ]
  assert keys == sorted(keys)


def test_discover_selected_types(tiny_root):
  wanted = synth.MACHINE_TYPES[:1]
  clips = dcase.discover(tiny_root, machine_types=wanted)
  assert clips and {c.machine_type for c in clips} == set(wanted)
  everything = dcase.discover(tiny_root)
  assert clips == [c for c in everything if c.machine_type in wanted]


def test_discover_ignores_repeated_and_reordered_types(tiny_root):
  # A type named twice must not list its clips twice.
  types = tuple(reversed(synth.MACHINE_TYPES)) + synth.MACHINE_TYPES[:1]
  assert dcase.discover(tiny_root, machine_types=types) == dcase.discover(
    tiny_root
  )


def test_machine_types_in(tiny_root, tmp_path):
  assert dcase.machine_types_in(tiny_root) == sorted(synth.MACHINE_TYPES)
  root = _minimal(tmp_path / "root", "valve")
  _minimal(root, "fan")
  (root / "dev_data" / "README.txt").write_text("a file, not a type")
  assert dcase.machine_types_in(root) == ["fan", "valve"]


def test_machine_types_in_empty_dev(tmp_path):
  (tmp_path / "dev_data").mkdir()
  with _raises(re.escape(str(tmp_path / "dev_data")), "no machine type"):
    dcase.machine_types_in(tmp_path)


def test_ae_asd_folder_names(tiny_root, tmp_path):
  renamed = tmp_path / "ae_asd"
  shutil.copytree(tiny_root / "dev_data", renamed / "dataset")
  shutil.copytree(tiny_root / "eval_data", renamed / "eval_dataset")
  clips = dcase.discover(renamed, dev_dir="dataset", eval_dir="eval_dataset")
  expected = dcase.discover(tiny_root)
  assert _relative(clips, renamed) == _relative(expected, tiny_root)
  assert all(c.path.startswith(str(renamed)) for c in clips)
  # With the default names nothing is found in the AE-ASD layout.
  with _raises(re.escape(str(renamed)), "dev_data"):
    dcase.discover(renamed)


def test_flac_and_uppercase_suffixes_count_others_do_not(tmp_path):
  root = _minimal(tmp_path / "root")
  helpers.make_tree(
    root,
    [
      "dev_data/fan/train/normal_id_00_00000001.flac",
      "dev_data/fan/train/normal_id_00_00000002.WAV",
      "dev_data/fan/train/notes.txt",
      "dev_data/fan/train/normal_id_00_00000003.wav.bak",
    ],
  )
  (root / "dev_data/fan/train/normal_id_00_00000004.wav").mkdir()
  names = [c.name for c in dcase.discover(root) if c.split == "train"]
  assert names == [
    "normal_id_00_00000000.wav",
    "normal_id_00_00000001.flac",
    "normal_id_00_00000002.WAV",
  ]


def test_missing_root(tmp_path):
  root = tmp_path / "absent"
  with _raises(re.escape(str(root)), "does not exist"):
    dcase.discover(root)


def test_root_is_a_file(tmp_path):
  root = tmp_path / "file"
  root.write_text("")
  with _raises(re.escape(str(root)), "not a folder"):
    dcase.discover(root)


def test_root_without_dev_data(tmp_path):
  helpers.make_tree(tmp_path, ["eval_data/fan/train/normal_id_01_00000000.wav"])
  with _raises(re.escape(str(tmp_path)), "dev_data/", "expected the DCASE"):
    dcase.discover(tmp_path)


def test_missing_type_lists_found_types(tmp_path):
  root = _minimal(tmp_path, "fan")
  _minimal(root, "valve")
  with _raises(
    re.escape(str(root / "dev_data")),
    "pump",
    re.escape("found ['fan', 'valve']"),
  ):
    dcase.discover(root, machine_types=("fan", "pump"))


def test_type_without_train_folder(tmp_path):
  helpers.make_tree(tmp_path, ["dev_data/fan/test/normal_id_00_00000000.wav"])
  folder = tmp_path / "dev_data" / "fan" / "train"
  with _raises(re.escape(str(folder)), "missing", "train clips of fan"):
    dcase.discover(tmp_path)


def test_empty_train_folder(tmp_path):
  root = _minimal(tmp_path)
  folder = root / "dev_data" / "fan" / "train"
  for f in folder.iterdir():
    f.unlink()
  with _raises(
    re.escape(str(folder)),
    r"no \.wav or \.flac files",
    "expected the train clips of fan",
  ):
    dcase.discover(root)


def test_empty_eval_test_folder(tmp_path):
  root = _minimal(tmp_path, eval_id="01")
  folder = root / "eval_data" / "fan" / "test"
  for f in folder.iterdir():
    f.unlink()
  with _raises(re.escape(str(folder)), "expected the test clips of fan"):
    dcase.discover(root)


def test_file_name_without_id(tmp_path):
  root = _minimal(tmp_path)
  bad = helpers.make_tree(root, ["dev_data/fan/train/normal_00000000.wav"])
  path = bad / "dev_data/fan/train/normal_00000000.wav"
  with _raises(
    re.escape(str(path)),
    "cannot parse the file name",
    "expected normal_id_XX_########",
  ):
    dcase.discover(root)


def test_duplicate_ids_across_dev_and_eval(tmp_path):
  root = _minimal(tmp_path, "fan", dev_id="00", eval_id="00")
  _minimal(root, "valve", dev_id="00", eval_id="01")
  with _raises("both the dev and eval", "fan/id_00", "expected disjoint"):
    dcase.discover(root)
  # The same id under different machine types is no clash.
  valve_only = dcase.discover(root, machine_types=("valve",))
  assert {(c.subset, c.section) for c in valve_only} == {
    ("dev", "id_00"),
    ("eval", "id_01"),
  }


def test_eval_folder_absent_gives_dev_only(tmp_path):
  root = _minimal(tmp_path)
  clips = dcase.discover(root)
  assert [(c.subset, c.split, c.label) for c in clips] == [
    ("dev", "train", 0),
    ("dev", "test", 1),
    ("dev", "test", 0),
  ]


def test_eval_type_absent_is_skipped(tmp_path):
  root = _minimal(tmp_path, "fan", eval_id="01")
  _minimal(root, "valve")  # No eval folder for valve.
  clips = dcase.discover(root)
  assert {c.machine_type for c in clips if c.subset == "eval"} == {"fan"}
  assert {c.machine_type for c in clips if c.subset == "dev"} == {
    "fan",
    "valve",
  }


def test_parse_clip_labelled():
  clip = dcase.parse_clip(
    "/d/fan/test/anomaly_id_06_00000123.wav", "fan", "test", "dev"
  )
  assert clip == dcase.Clip(
    "/d/fan/test/anomaly_id_06_00000123.wav", "fan", "id_06", 1, "test", "dev"
  )
  clip = dcase.parse_clip(
    pathlib.Path("/d/normal_id_1_7.flac"), "pump", "train", "eval"
  )
  assert (clip.path, clip.section, clip.label) == (
    "/d/normal_id_1_7.flac",
    "id_1",
    0,
  )
  assert isinstance(clip.path, str)


def test_parse_clip_unlabelled_only_in_eval_test():
  clip = dcase.parse_clip("id_03_00000000.wav", "fan", "test", "eval")
  assert (clip.section, clip.label) == ("id_03", dcase.UNLABELLED)
  # Labelled names are taken at their word even in the eval test set.
  clip = dcase.parse_clip("anomaly_id_03_00000000.wav", "fan", "test", "eval")
  assert clip.label == 1
  for split, section in (("test", "dev"), ("train", "eval"), ("train", "dev")):
    with _raises("id_03_00000000.wav", "expected normal_id_XX"):
      dcase.parse_clip("id_03_00000000.wav", "fan", split, section)


@pytest.mark.parametrize(
  "name",
  [
    "normal_00000000.wav",
    "abnormal_id_00_00000000.wav",
    "normal_id_00.wav",
    "normal_id_xx_00000000.wav",
    "normal_id_00_00000000_extra.wav",
    "Normal_id_00_00000000.wav",
  ],
)
def test_parse_clip_rejects(name):
  with _raises(re.escape(name), "cannot parse", "expected"):
    dcase.parse_clip(name, "fan", "train", "dev")


def test_audio_files_lists_dangling_links_but_no_folders(tmp_path):
  folder = tmp_path / "clips"
  helpers.make_tree(folder, ["b.wav", "c.FLAC", "notes.txt", "deep/d.wav"])
  (folder / "a.wav").symlink_to(tmp_path / "gone.wav")
  (folder / "dir.wav").mkdir()
  (folder / "dirlink.wav").symlink_to(folder / "dir.wav")
  (folder / "loop.flac").symlink_to(folder / "loop.flac")
  assert dcase.audio_files(folder) == [
    folder / "a.wav",
    folder / "b.wav",
    folder / "c.FLAC",
    folder / "loop.flac",
  ]
  assert dcase.audio_files(folder, recursive=True) == [
    folder / "a.wav",
    folder / "b.wav",
    folder / "c.FLAC",
    folder / "deep" / "d.wav",
    folder / "loop.flac",
  ]


def test_discover_keeps_a_dangling_link_for_the_bad_file_report(tmp_path):
  root = _minimal(tmp_path)
  link = root / "dev_data/fan/train/normal_id_00_00000001.wav"
  link.symlink_to(tmp_path / "elsewhere.wav")
  names = [c.name for c in dcase.discover(root) if c.split == "train"]
  assert names == ["normal_id_00_00000000.wav", link.name]
