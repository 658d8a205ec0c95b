"""Paths and names a run meets: each one works, or is refused up front.

Workdirs Orbax cannot read back, names that are not UTF-8, hidden files in
the data, the section a recording's name gives, and refusals that name the
one thing wrong.
"""

import asyncio
import gc
import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

import helpers
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.evaluation import recordings
from aeasd_jax.training import run_identity
from aeasd_jax.training import train
from aeasd_jax.workdir import checkpoint
from aeasd_jax.workdir import layout
from aeasd_jax.errors import AeasdError
from configs import default

NOT_UTF8 = os.fsdecode(b"fan\xff")
_CLIPS_2020 = [
  "dev_data/fan/train/normal_id_00_00000000.wav",
  "dev_data/fan/test/normal_id_00_00000000.wav",
  "dev_data/fan/test/anomaly_id_00_00000000.wav",
]


@pytest.mark.parametrize(
  "name,reason",
  [
    ("sweep[1]", "holds '\\[', which Orbax reads as a glob pattern"),
    ("run*", "holds '\\*', which Orbax reads as a glob pattern"),
    (os.fsdecode(b"run\xff"), "not valid UTF-8"),
  ],
)
def test_a_workdir_orbax_cannot_use_is_refused_before_training(
  tiny_config, tmp_path, name, reason
):
  """Such a run trained and exited 0, then its checkpoints never read back."""
  workdir = tmp_path / name
  with pytest.raises(AeasdError, match=f"^workdir .*: .*{reason}"):
    train.train_and_evaluate(tiny_config, workdir)
  assert not (workdir / "config.json").exists()
  assert not (workdir / "checkpoints").exists()
  # evaluate.py's checkpoint reads refuse it too, for a workdir of before.
  with pytest.raises(AeasdError, match=reason):
    checkpoint.manager(layout.Workdir(workdir).checkpoints)


def test_a_data_root_that_is_not_utf8_is_named(tmp_path):
  root = helpers.make_tree(tmp_path / NOT_UTF8, _CLIPS_2020)
  with pytest.raises(AeasdError, match="^data root .*: not valid UTF-8"):
    dcase.discover(root)


def test_a_machine_type_folder_that_is_not_utf8_is_named_escaped(tmp_path):
  root = helpers.make_tree(
    tmp_path, [p.replace("/fan/", f"/{NOT_UTF8}/") for p in _CLIPS_2020]
  )
  with pytest.raises(AeasdError) as info:
    dcase.discover(root)
  message = str(info.value)
  assert message.startswith(f'"{tmp_path}/dev_data/fan'), message
  assert "machine type folder's name is not valid UTF-8" in message


def test_hidden_files_and_folders_are_not_data(tmp_path):
  """Jupyter's, macOS's and Finder's files, as the baselines' globs skip."""
  clean = helpers.make_tree(tmp_path / "clean", _CLIPS_2020)
  cluttered = helpers.make_tree(
    tmp_path / "cluttered",
    _CLIPS_2020
    + [
      "dev_data/.ipynb_checkpoints/train/normal_id_00_00000000.wav",
      "dev_data/.DS_Store",
      "dev_data/fan/.DS_Store",
      # Sorted before the clips, it was the name the year was told from.
      "dev_data/fan/train/._normal_id_00_00000000.wav",
      "dev_data/fan/test/._anomaly_id_00_00000000.wav",
    ],
  )
  assert dcase.detect_year(cluttered) == 2020
  assert dcase.machine_types_in(cluttered) == ["fan"]
  found = [
    os.path.relpath(c.path, cluttered) for c in dcase.discover(cluttered)
  ]
  assert found == [
    os.path.relpath(c.path, clean) for c in dcase.discover(clean)
  ]
  assert dcase.audio_files(cluttered, recursive=True) == [
    cluttered / p for p in sorted(_CLIPS_2020)
  ]


@pytest.mark.parametrize(
  "name,group",
  [
    ("section_01_source_test_anomaly_0003_vel_6.wav", "fan/section_01"),
    ("section_01_0007.wav", "fan/section_01"),
    ("section_00_target_test_0001.wav", "fan/section_00"),
    ("anomaly_id_02_00000003.wav", "fan/id_02"),
    ("id_02_00000003.wav", "fan/id_02"),
  ],
)
def test_a_recording_goes_to_the_model_of_the_section_its_name_gives(
  name, group
):
  """--wav with one model per section: 2021+ names, as discovery reads them."""
  groups = ["fan/id_02", "fan/section_00", "fan/section_01", "valve/id_00"]
  found = recordings._group_of_recording(pathlib.Path(name), "fan", groups)  # pylint: disable=protected-access
  assert found == group


def test_a_recording_of_no_trained_section_names_the_trained_ones():
  with pytest.raises(AeasdError, match=r"one of \['section_00'\]"):
    recordings._group_of_recording(  # pylint: disable=protected-access
      pathlib.Path("section_03_0001.wav"), "fan", ["fan/section_00"]
    )


def _workdir_with_config(path, config):
  workdir = layout.Workdir(path).make()
  workdir.write_config_values(json.loads(config.to_json()))
  return workdir


def test_a_rerun_of_other_settings_names_the_one_that_differs(tmp_path):
  saved = default.get_config()
  workdir = _workdir_with_config(tmp_path, saved)
  config = default.get_config()
  config.model.hidden = 64
  with pytest.raises(AeasdError) as info:
    run_identity.check_resume(workdir, config)
  assert str(info.value) == (
    f"workdir {tmp_path} holds a run with model.hidden=128, but this config"
    " has model.hidden=64; use another --workdir or the same settings"
  )


def test_a_stored_cache_folder_under_a_file_is_refused_unless_replaced(
  tmp_path,
):
  """evaluate.py of a copied workdir: --cache_dir names the cache's place."""
  a_file = tmp_path / "file"
  a_file.write_text("")
  config = default.get_config()
  config.data.cache_dir = str(a_file / "cache")
  workdir = _workdir_with_config(tmp_path / "run", config)
  before = workdir.config_file.read_text()
  with pytest.raises(
    AeasdError, match=r"config.json: config.data.cache_dir=.* is a file"
  ):
    run_identity.load_config(workdir)
  loaded = run_identity.load_config(workdir, str(tmp_path / "cache"))
  assert loaded.data.cache_dir == str(tmp_path / "cache")
  assert workdir.config_file.read_text() == before


def test_an_eval_only_type_without_train_folder_says_what_is_missing(
  tmp_path,
):
  """From 2023 the eval set's own types train on eval_data/<type>/train."""
  root = helpers.make_tree(
    tmp_path,
    [
      "dev_data/raw/fan/train/section_00_source_train_normal_0000_a.wav",
      "dev_data/raw/fan/test/section_00_source_test_normal_0000_a.wav",
      "dev_data/raw/fan/test/section_00_source_test_anomaly_0000_a.wav",
      "eval_data/raw/pump/test/section_00_0000.wav",
    ],
  )
  clips = dcase.discover(root, year=2023)
  with pytest.raises(AeasdError) as info:
    dataset.make_groups(
      clips,
      group_by="type",
      use_eval_train=True,
      validation_split=0.1,
      seed=0,
    )
  message = str(info.value)
  assert message.startswith("no training clips for pump "), message
  assert message.endswith(
    f"expected its training clips in {root}/eval_data/raw/pump/train"
  ), message


def test_a_damaged_checkpoint_logs_nothing_but_its_error(
  tmp_path, monkeypatch, caplog
):
  """Orbax's and asyncio's tracebacks would bury the one error line."""
  mngr = checkpoint.manager(tmp_path / "checkpoints")
  state = {"w": jnp.ones(3)}
  checkpoint.save(mngr, 1, state)
  checkpoint.wait(mngr, 1)

  def failing_read(*unused_args, **unused_kwargs):
    absl_logging.error("reading failed", exc_info=ValueError("damaged"))
    loop = asyncio.new_event_loop()
    # A failed read whose exception nobody retrieves: asyncio logs it, with
    # its traceback, once the garbage collector frees it (it is in a cycle).
    future = loop.create_future()
    future.set_exception(ValueError("damaged"))
    cycle = [future]
    cycle.append(cycle)
    loop.close()
    raise ValueError("damaged")

  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_read)
  caplog.set_level(logging.WARNING)
  with pytest.raises(
    AeasdError, match="checkpoints/1: the checkpoint is damaged"
  ):
    checkpoint.restore(mngr, jax.eval_shape(lambda: state))
  gc.collect()
  assert [r.getMessage() for r in caplog.records] == []
  # What a read that succeeds logs still reaches the log.
  monkeypatch.setattr(
    ocp.CheckpointManager,
    "restore",
    lambda *args, **kwargs: absl_logging.warning("restored") or state,
  )
  checkpoint.restore(mngr, jax.eval_shape(lambda: state))
  assert [r.getMessage() for r in caplog.records] == ["restored"]
