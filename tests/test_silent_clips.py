"""Silent training clips: a warning for some of a group's, an error for all."""

import shutil

import numpy as np
import soundfile

from aeasd_jax import runtime
from aeasd_jax.data import dataset
from aeasd_jax.training import train


def _silence(root, names):
  """Overwrites fan's dev training clips `names` with zeros of their length."""
  for name in names:
    path = root / "dev_data" / "fan" / "train" / name
    info = soundfile.info(path)
    soundfile.write(
      path, np.zeros(info.frames), info.samplerate, subtype=info.subtype
    )


def _fan_only(config, tiny_root, tmp_path):
  """config on a private copy of the tiny dataset's fan clips; its root."""
  root = tmp_path / "data"
  shutil.copytree(tiny_root, root)
  config.data.root = str(root)
  config.data.machine_types = ("fan",)
  config.data.use_eval_train = False
  return root


def test_some_silent_training_clips_are_warned_of(
  tiny_config, tiny_root, tmp_path, caplog
):
  root = _fan_only(tiny_config, tiny_root, tmp_path)
  _silence(root, ["normal_id_02_00000001.wav", "normal_id_04_00000003.wav"])
  features, groups = dataset.load(tiny_config, show_progress=False)
  train.check_trainable(tiny_config, features, groups)
  (fan,) = groups
  total = len(fan.train_clips) + len(fan.val_clips)
  warned = [
    r.getMessage() for r in caplog.records if "silent" in r.getMessage()
  ]
  assert len(warned) == 1
  assert warned[0].startswith(
    f"group fan: 2 of {total} training clips are silent or constant (e.g. "
  )
  assert "dev_data/fan/train/normal_id_0" in warned[0]


def test_a_group_of_silent_training_clips_is_refused(
  tiny_config, tiny_root, tmp_path, capsys
):
  root = _fan_only(tiny_config, tiny_root, tmp_path)
  names = [p.name for p in (root / "dev_data" / "fan" / "train").iterdir()]
  _silence(root, names)
  try:
    runtime.run(lambda: train.train_and_evaluate(tiny_config, tmp_path / "run"))
    code = 0
  except SystemExit as e:
    code = e.code
  stderr = capsys.readouterr().err
  assert code == 2, stderr
  assert (
    stderr.strip()
    .splitlines()[-1]
    .startswith(
      f"error: group fan: all {len(names)} training clips are silent or"
      " constant (e.g. "
    )
  )
  assert not (tmp_path / "run" / "checkpoints").exists()
