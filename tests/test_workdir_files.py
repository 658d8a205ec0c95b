"""Workdir files: plain-open permissions, strict JSON, damage named early."""

import json
import math
import os
import stat

import pytest

from aeasd_jax.training import run_identity
from aeasd_jax.workdir import file_io
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout
from configs import default


_IDENTITY = {"fingerprint": "0" * 64, "training_clips": 1, "root": "/data"}


def _prepare(workdir, config):
  """What train.py does to a workdir before training: check, then record."""
  run_identity.check_resume(layout.Workdir(workdir), config)
  groups = (
    layout.Workdir(workdir).read_groups()
    if (workdir / "groups.json").exists()
    else ["fan"]
  )
  run_identity.record_run(layout.Workdir(workdir), config, groups, _IDENTITY)


def _strict_loads(text):
  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")

  return json.loads(text, parse_constant=refuse)


@pytest.fixture
def umask_027():
  old = os.umask(0o027)
  yield
  os.umask(old)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_mode(tmp_path, umask_027):
  plain = tmp_path / "plain.txt"
  plain.write_text("x")
  file_io.write_text(tmp_path / "atomic.json", "{}")
  with file_io.atomic_open(tmp_path / "plot.png", "wb") as f:
    f.write(b"png")
  assert _mode(plain) == 0o640
  assert _mode(tmp_path / "atomic.json") == _mode(plain)
  assert _mode(tmp_path / "plot.png") == _mode(plain)


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_027):
  path = tmp_path / "thresholds.json"
  path.write_text("{}")
  os.chmod(path, 0o664)
  file_io.write_text(path, '{"a": 1}')
  assert _mode(path) == 0o664
  assert json.loads(path.read_text()) == {"a": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["thresholds.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with file_io.atomic_open(path) as f:
      f.write("new")
      raise RuntimeError("killed")
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_non_finite_floats_are_written_as_null(tmp_path):
  value = {
    "best@3": {
      "thresholds": {
        "fan": math.inf,
        "pump": -math.inf,
        "valve": math.nan,
        "slider": 1.5,
      },
      "losses": (math.nan, 2.0),
      "epoch": 3,
      "ok": True,
    }
  }
  text = file_io.dumps_json(value, indent=2, sort_keys=True)
  assert _strict_loads(text) == {
    "best@3": {
      "thresholds": {"fan": None, "pump": None, "valve": None, "slider": 1.5},
      "losses": [None, 2.0],
      "epoch": 3,
      "ok": True,
    }
  }
  file_io.write_json(tmp_path / "thresholds.json", value)
  _strict_loads((tmp_path / "thresholds.json").read_text())


def test_a_config_with_an_infinite_setting_is_written_strictly(tmp_path):
  config = default.get_config()
  config.features.fmax = math.inf  # An identity setting, compared on resume.
  _prepare(tmp_path, config)
  saved = _strict_loads((tmp_path / "config.json").read_text())
  assert saved["features"]["fmax"] is None
  _prepare(tmp_path, config)  # Still the same run.


@pytest.mark.parametrize(
  "name,text,expected",
  [
    ("groups.json", '["fan", "pu', r"groups.json: damaged \(not valid JSON"),
    (
      "groups.json",
      '{"fan": 1}',
      r"groups.json: damaged \(expected a JSON list, found an object\)",
    ),
    (
      "groups.json",
      '["fan", 3]',
      r"groups.json: damaged \(expected a list of group names\)",
    ),
    (
      "thresholds.json",
      '{"best@2": {"percen',
      r"thresholds.json: damaged \(not valid JSON",
    ),
    (
      "thresholds.json",
      "[]",
      r"thresholds.json: damaged \(expected a JSON object, found a list\)",
    ),
    (
      "thresholds.json",
      '{"best@2": {"thresholds": {}}}',
      r"thresholds.json: damaged \(entry 'best@2' is not",
    ),
    ("config.json", "", r"config.json: damaged \(not valid JSON"),
    ("config.json", "\xff", r"config.json: damaged \(not valid JSON"),
    (
      "config.json",
      "[]",
      r"config.json: damaged \(expected a JSON object, found a list\)",
    ),
    ("config.json", "{}", r"config.json: damaged \(no setting seed\)"),
  ],
)
def test_a_damaged_file_is_named_before_any_work(
  tmp_path, name, text, expected
):
  config = default.get_config()
  _prepare(tmp_path, config)
  (tmp_path / name).write_bytes(text.encode("latin-1"))
  with pytest.raises(AeasdError, match=expected):
    _prepare(tmp_path, config)


@pytest.mark.parametrize(
  "drop,missing",
  [
    ("model", "model"),
    ("seed", "seed"),
    ("features", "features"),
    ("data", "data"),
  ],
)
def test_a_config_json_lacking_a_section_names_it(tmp_path, drop, missing):
  """Damage, not age: a new setting never comes as a whole section."""
  _prepare(tmp_path, default.get_config())
  values = json.loads((tmp_path / "config.json").read_text())
  *groups, key = drop.split(".")
  parent = values
  for group in groups:
    parent = parent[group]
  del parent[key]
  (tmp_path / "config.json").write_text(json.dumps(values))
  with pytest.raises(
    AeasdError,
    match=rf"config.json: damaged \(no setting"
    rf" {missing}\); expected every setting"
    " configs/default.py has; add it",
  ):
    run_identity.load_config(tmp_path)


def test_a_config_json_with_a_wrong_kind_of_setting_is_named(tmp_path):
  _prepare(tmp_path, default.get_config())
  values = json.loads((tmp_path / "config.json").read_text())
  values["model"] = 5
  (tmp_path / "config.json").write_text(json.dumps(values))
  with pytest.raises(
    AeasdError,
    match=r"config.json: damaged \(at setting"
    r" model: 'int' object is not subscriptable\)",
  ):
    run_identity.load_config(tmp_path)
  values["model"] = {**default.get_config().model.to_dict(), "frames": -1}
  (tmp_path / "config.json").write_text(json.dumps(values))
  with pytest.raises(
    AeasdError,
    match=r"config.json: config.model.frames=-1:"
    " expected a positive integer",
  ):
    run_identity.load_config(tmp_path)


def test_a_missing_file_is_named(tmp_path):
  with pytest.raises(
    AeasdError,
    match=r"config.json: missing; expected a"
    " workdir written by train.py",
  ):
    run_identity.load_config(tmp_path)
  with pytest.raises(AeasdError, match=r"groups.json: missing"):
    layout.Workdir(tmp_path).read_groups()
  assert layout.Workdir(tmp_path).read_thresholds() == {}


def test_stored_null_thresholds_read_back_as_nan(tmp_path):
  file_io.write_json(
    tmp_path / "thresholds.json",
    {
      "best@2": {
        "percentile": 90.0,
        "pooling": "mean",
        "thresholds": {"fan": math.inf, "pump": 1.5},
      }
    },
  )
  stored = layout.Workdir(tmp_path).read_thresholds()
  assert math.isnan(stored["best@2"]["thresholds"]["fan"])
  assert stored["best@2"]["thresholds"]["pump"] == 1.5
  assert stored["best@2"]["percentile"] == 90.0


def test_a_good_workdir_passes_and_keeps_its_config(tmp_path):
  config = default.get_config()
  _prepare(tmp_path, config)
  file_io.write_json(tmp_path / "groups.json", ["fan", "pump"])
  file_io.write_json(
    tmp_path / "thresholds.json",
    {
      "best@2": {
        "percentile": 90.0,
        "pooling": "mean",
        "thresholds": {"fan": 1.0},
      }
    },
  )
  _prepare(tmp_path, config)
  assert layout.Workdir(tmp_path).read_groups() == ["fan", "pump"]
  assert run_identity.load_config(tmp_path).to_dict() == json.loads(
    config.to_json()
  )


def test_a_run_resumes_a_workdir_lacking_a_newer_setting(tmp_path, caplog):
  config = default.get_config()
  _prepare(tmp_path, config)
  values = json.loads((tmp_path / "config.json").read_text())
  del values["train"]["log_every"]
  del values["data"]["feature_batch_seconds"]
  del values["model"]["compute_dtype"]  # Identity, but its default is old.
  (tmp_path / "config.json").write_text(json.dumps(values))
  # As an older version wrote it: evaluate.py reads it with today's defaults.
  loaded = run_identity.load_config(tmp_path)
  assert loaded.train.log_every == config.train.log_every
  assert loaded.data.feature_batch_seconds == config.data.feature_batch_seconds
  assert "train.log_every" in caplog.text
  assert "data.feature_batch_seconds" in caplog.text
  assert loaded.model.compute_dtype == "float32"
  _prepare(tmp_path, config)
  assert json.loads((tmp_path / "config.json").read_text())["train"][
    "log_every"
  ] == (config.train.log_every)
