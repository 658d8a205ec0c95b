"""DCASE 2021-2026 layouts: folders, file names, year detection, channels.

The names are real ones from the official evaluators' ground-truth lists
and the official baseline's file lists (one per year and form).
"""

import pathlib
import re

import numpy as np
import pytest
import soundfile

import helpers
from aeasd_jax.data import audio
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.errors import AeasdError
from configs import default


def _by_name(clips):
  return {c.name: c for c in clips}


# (year, dev folder prefix, train name, test names, eval train, eval test)
_YEARS = {
  2021: (
    "dev_data/fan",
    "section_00_source_train_normal_0000_strength_1_ambient.wav",
    {
      "source_test/section_00_source_test_normal_0000.wav": (0, "source"),
      "target_test/section_00_target_test_anomaly_0099.wav": (1, "target"),
    },
    "section_03_target_train_normal_0001_strength_2.wav",
    {"source_test/section_03_source_test_0000.wav": "source"},
  ),
  2022: (
    "dev_data/fan",
    "section_01_source_train_normal_0000_m-n_X.wav",
    {
      "test/section_01_target_test_anomaly_0049_m-n_W.wav": (1, "target"),
      "test/section_01_source_test_normal_0001_m-n_X.wav": (0, "source"),
    },
    "section_03_source_train_normal_0000_vel_21.wav",
    {"test/section_03_0000.wav": ""},
  ),
  2023: (
    "dev_data/raw/bandsaw",
    "section_00_source_train_normal_0000_vel_15.wav",
    {
      "test/section_00_source_test_anomaly_0005_vel_15.wav": (1, "source"),
      "test/section_00_target_test_normal_0000_vel_12.wav": (0, "target"),
    },
    None,
    {},
  ),
  2024: (
    "dev_data/raw/RoboticArm",
    "section_00_source_train_normal_0001_noAttribute.wav",
    {
      # 2024's RoboticArm names lack the split.
      "test/section_00_source_normal_0035_weight15_BckgF.wav": (0, "source"),
      "test/section_00_target_test_anomaly_0001_mdl_B_spd_2.wav": (1, "target"),
    },
    "section_01_source_train_normal_0001_noAttribute.wav",
    {"test/section_01_0001.wav": ""},
  ),
  2025: (
    "dev_data/raw/AutoTrash",
    "section_00_source_train_normal_0000_.wav",
    {
      "test/section_00_target_test_anomaly_0012_id_C1_spd_2_mic_2.wav": (
        1,
        "target",
      ),
      "test/section_00_source_test_normal_0000_.wav": (0, "source"),
    },
    None,
    {},
  ),
}


@pytest.mark.parametrize("year", sorted(_YEARS))
def test_every_year_parses_its_names(tmp_path, year):
  prefix, train, tests, eval_train, eval_tests = _YEARS[year]
  machine_type = prefix.rsplit("/", 1)[1]
  eval_prefix = prefix.replace("dev_data", "eval_data")
  files = [f"{prefix}/train/{train}"]
  files += [f"{prefix}/{t}" for t in tests]
  if eval_train:
    files.append(f"{eval_prefix}/train/{eval_train}")
    files += [f"{eval_prefix}/{t}" for t in eval_tests]
  root = helpers.make_tree(tmp_path, files)
  clips = _by_name(dcase.discover(root, year=year))
  assert len(clips) == len(files)
  trained = clips[train]
  assert (trained.machine_type, trained.split, trained.subset) == (
    machine_type,
    "train",
    "dev",
  )
  assert (trained.label, trained.domain) == (0, "source")
  assert trained.section == re.match(r"section_\d\d", train)[0]
  for relative, (label, domain) in tests.items():
    clip = clips[pathlib.Path(relative).name]
    assert (clip.label, clip.domain, clip.split) == (label, domain, "test")
  for relative, domain in eval_tests.items():
    clip = clips[pathlib.Path(relative).name]
    assert (clip.label, clip.domain, clip.subset) == (
      dcase.UNLABELLED,
      domain,
      "eval",
    )
  # Nothing but the year tells 2022 to 2026 apart; 2021 by its folders.
  assert dcase.detect_year(root) == (year if year <= 2022 else 2022)


def test_attributes_are_kept(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/fan/train/section_00_source_train_normal_0000_vel_12_loc_B.wav",
      "dev_data/fan/train/section_00_source_train_normal_0001_noAttribute.wav",
      "dev_data/fan/train/section_00_source_train_normal_0002_.wav",
      "dev_data/fan/train/section_00_target_train_normal_0003_ac_0.03_.wav",
      "dev_data/fan/test/section_00_source_test_normal_0000_vel_12.wav",
    ],
  )
  attributes = [
    c.attributes for c in dcase.discover(root, year=2023) if c.split == "train"
  ]
  assert attributes == ["vel_12_loc_B", "noAttribute", "", "ac_0.03_"]


def test_2020_detected_and_unchanged(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/fan/train/normal_id_00_00000000.wav",
      "dev_data/fan/test/anomaly_id_00_00000000.wav",
    ],
  )
  assert dcase.detect_year(root) == 2020
  (clip,) = [c for c in dcase.discover(root) if c.split == "test"]
  assert (clip.section, clip.domain, clip.attributes) == ("id_00", "", "")


@pytest.mark.parametrize(
  "year, name, expected",
  [
    (2020, "section_00_source_train_normal_0000_.wav", "normal_id_XX"),
    (2023, "normal_id_00_00000000.wav", r"section_XX_\(source\|target\)"),
    # A test clip in the train folder.
    (2023, "section_00_source_test_normal_0000_.wav", "section_XX_"),
    (2023, "section_00_middle_train_normal_0000_.wav", "section_XX_"),
  ],
)
def test_a_name_that_does_not_fit_the_year_is_named(
  tmp_path, year, name, expected
):
  root = helpers.make_tree(tmp_path, [f"dev_data/fan/train/{name}"])
  with pytest.raises(AeasdError, match=f"{re.escape(name)}.*DCASE {year}"):
    dcase.discover(root, year=year)
  with pytest.raises(AeasdError, match=expected):
    dcase.discover(root, year=year)


def test_a_blind_name_only_in_the_eval_test_set(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/fan/train/section_00_source_train_normal_0000_.wav",
      "dev_data/fan/test/section_00_0000.wav",
    ],
  )
  with pytest.raises(AeasdError, match="section_00_0000.wav"):
    dcase.discover(root, year=2023)


def test_2021_blind_names_keep_the_domain_and_2022_names_do_not(tmp_path):
  base = "eval_data/fan/source_test"
  dev = [
    "dev_data/fan/train/section_00_source_train_normal_0000.wav",
    "dev_data/fan/source_test/section_00_source_test_normal_0000.wav",
  ]
  root = helpers.make_tree(
    tmp_path / "a", [*dev, f"{base}/section_03_0000.wav"]
  )
  with pytest.raises(AeasdError, match="section_XX_\\(source\\|target\\)_test"):
    dcase.discover(root, year=2021)
  root = helpers.make_tree(
    tmp_path / "b", [*dev, f"{base}/section_03_target_test_0000.wav"]
  )
  with pytest.raises(AeasdError, match="a target clip in a source_test"):
    dcase.discover(root, year=2021)


def test_sections_shared_by_dev_and_eval_are_refused(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/fan/train/section_00_source_train_normal_0000_.wav",
      "dev_data/fan/test/section_00_source_test_normal_0000_.wav",
      "eval_data/fan/train/section_00_source_train_normal_0000_.wav",
    ],
  )
  with pytest.raises(AeasdError, match="sections.*fan/section_00"):
    dcase.discover(root, year=2023)


def test_supplemental_is_left_out_unless_asked(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/raw/fan/train/section_00_source_train_normal_0000_.wav",
      "dev_data/raw/fan/test/section_00_source_test_normal_0000_.wav",
      "dev_data/raw/fan/supplemental/section_00_machine_0001_.wav",
    ],
  )
  assert len(dcase.discover(root, year=2025)) == 2
  assert dcase.supplemental_folders(root, ["fan"], "dev_data", "eval_data") == [
    root / "dev_data/raw/fan/supplemental"
  ]
  clips = dcase.discover(root, year=2025, use_supplemental=True)
  (extra,) = [
    c for c in clips if pathlib.Path(c.path).parent.name == "supplemental"
  ]
  assert (extra.split, extra.label, extra.section) == ("train", 0, "section_00")


def test_raw_holds_the_types_unless_it_is_a_type(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    ["dev_data/raw/train/normal_id_00_00000000.wav"],  # A type named raw.
  )
  assert dcase.machine_types_in(root) == ["raw"]


@pytest.fixture(name="stereo_clip")
def _stereo_clip(tmp_path):
  path = tmp_path / "stereo.wav"
  rng = np.random.default_rng(0)
  near = rng.uniform(-0.5, 0.5, 2048)
  far = 0.25 * rng.uniform(-0.5, 0.5, 2048)
  soundfile.write(path, np.stack([near, far], 1), 16000, subtype="FLOAT")
  return path, near.astype(np.float32), far.astype(np.float32)


def test_channel_choice(stereo_clip):
  path, near, far = stereo_clip
  np.testing.assert_array_equal(audio.read_audio(path, channel="0"), near)
  np.testing.assert_array_equal(audio.read_audio(path, channel="1"), far)
  # The mean in float32 of two float32 samples rounds once: half an ulp.
  np.testing.assert_allclose(
    audio.read_audio(path), (near + far) / 2, rtol=2**-24, atol=0
  )
  with pytest.raises(AeasdError, match="2 channel.*config.data.channel=2"):
    audio.read_audio(path, channel="2")


def test_attribute_lists_fill_what_names_hide(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/raw/gearbox/train/section_00_source_train_normal_0001_noAttribute.wav",
      "dev_data/raw/gearbox/train/section_00_source_train_normal_0002_vel_3.wav",
      "dev_data/raw/gearbox/test/section_00_source_test_normal_0001_noAttribute.wav",
    ],
  )
  (root / "dev_data/raw/gearbox/attributes_00.csv").write_text(
    "file_name,d1p,d1v,d2p,d2v\n"
    "gearbox/train/section_00_source_train_normal_0001_noAttribute.wav,"
    "volt,1.0,wt,30\n"
    "gearbox/train/section_00_source_train_normal_0002_vel_3.wav,vel,4,,\n"
  )
  clips = _by_name(dcase.discover(root, year=2024))
  assert clips[
    "section_00_source_train_normal_0001_noAttribute.wav"
  ].attributes == ("volt_1.0_wt_30")
  # A name's own attributes stand.
  assert clips["section_00_source_train_normal_0002_vel_3.wav"].attributes == (
    "vel_3"
  )
  assert clips[
    "section_00_source_test_normal_0001_noAttribute.wav"
  ].attributes == ("noAttribute")
  (root / "dev_data/raw/gearbox/attributes_00.csv").write_text("name,x\n")
  with pytest.raises(AeasdError, match="attributes_00.csv.*file_name,d1p"):
    dcase.discover(root, year=2024)


def test_a_sections_domains_share_its_model(tmp_path):
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/fan/train/section_00_source_train_normal_0000_.wav",
      "dev_data/fan/train/section_00_target_train_normal_0000_.wav",
      "dev_data/fan/train/section_01_source_train_normal_0000_.wav",
      "dev_data/fan/test/section_00_target_test_anomaly_0000_.wav",
      "dev_data/fan/test/section_01_source_test_normal_0000_.wav",
    ],
  )
  clips = dcase.discover(root, year=2023)
  for group_by, names in (
    ("type", ["fan"]),
    ("type_section", ["fan/section_00", "fan/section_01"]),
  ):
    groups = dataset.make_groups(
      clips,
      group_by=group_by,
      use_eval_train=True,
      validation_split=0.0,
      seed=0,
    )
    assert [g.name for g in groups] == names
    for group in groups:
      sections = {
        clips[c].section for c in (*group.train_clips, *group.test_clips)
      }
      assert sections == (
        {"section_00", "section_01"}
        if group_by == "type"
        else {group.name.split("/")[1]}
      )
  by_section = dict(
    (g.name, {clips[c].domain for c in g.train_clips})
    for g in dataset.make_groups(
      clips,
      group_by="type_section",
      use_eval_train=True,
      validation_split=0.0,
      seed=0,
    )
  )
  assert by_section["fan/section_00"] == {"source", "target"}


def _write_clips(root, stereo):
  """A tiny 2025/2026-style root: channel 0 of each stereo clip is the mono
  clip of the same name."""
  rng = np.random.default_rng(1)
  names = [
    "train/section_00_source_train_normal_0000_.wav",
    "train/section_00_source_train_normal_0001_.wav",
    "train/section_00_target_train_normal_0000_.wav",
    "test/section_00_source_test_normal_0000_.wav",
    "test/section_00_source_test_anomaly_0000_.wav",
    "test/section_00_target_test_normal_0000_.wav",
    "test/section_00_target_test_anomaly_0000_.wav",
  ]
  for name in names:
    near = rng.uniform(-0.5, 0.5, 8000)
    far = rng.uniform(-0.1, 0.1, 8000)
    path = root / "dev_data/raw/fan" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.stack([near, far], 1) if stereo else near
    soundfile.write(path, samples, 16000, subtype="FLOAT")
  return root


def test_2026_takes_channel_0_of_stereo_clips(tmp_path):
  configs = {}
  for name, stereo, year in (("mono", False, 2025), ("stereo", True, 2026)):
    config = default.get_config()
    config.data.root = str(_write_clips(tmp_path / name, stereo))
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.dcase_year = year
    config.compile_cache_dir = "off"
    configs[name] = config
  mono, mono_groups = dataset.load(configs["mono"], show_progress=False)
  stereo, _ = dataset.load(configs["stereo"], show_progress=False)
  # The 2026 baseline's channel 0 is the near microphone alone.
  np.testing.assert_array_equal(stereo.frames, mono.frames)
  assert dataset.audio_channel(configs["stereo"], 2026) == "0"
  configs["stereo"].data.channel = "mean"
  mixed, _ = dataset.load(configs["stereo"], show_progress=False)
  assert not np.array_equal(mixed.frames, mono.frames)
  # Another channel of the same files is other training data.
  fingerprints = set()
  for channel, features in (("0", stereo), ("mean", mixed)):
    configs["stereo"].data.channel = channel
    fingerprints.add(
      dataset.data_identity(configs["stereo"], features, mono_groups)[
        "fingerprint"
      ]
    )
  assert len(fingerprints) == 2
