"""Every setting and every flag, walked: each bad value is one `error:` line.

Tracebacks and misleading refusals kept coming back one value at a time, so
these tables list, for every leaf of configs/default.py and for every flag
the programs define, the values that must be refused. A setting or flag
added without a row fails test_*_table_covers_every_*: the table must say
what is wrong for it, or that nothing is.
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from aeasd_jax.training import config_check
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout
from configs import default

REPO = pathlib.Path(__file__).parents[1]
NAN, INF = math.nan, math.inf
# A regular file, so that nothing can lie under it.
A_FILE = str(pathlib.Path(__file__))
UNDER_A_FILE = f"{A_FILE}/below"
NOT_UTF8 = os.fsdecode(b"run\xff")

# setting: (values it must refuse, values it must take). A value is set as
# it is, also of a type ConfigDict would refuse: a config file can build a
# section of its own.
SETTINGS = {
  "name": ((), ("idnn", "sweep 1")),
  "seed": ((-1, 2**32, 1.5, True, "0", None), (0, 2**32 - 1)),
  "compile_cache_dir": ((UNDER_A_FILE, NOT_UTF8, 5, None), ("", "off")),
  "workdir_lock_stale_s": ((0.0, -1.0, NAN, INF, True, "60"), (0.5, 3600)),
  "data.root": ((UNDER_A_FILE, NOT_UTF8, 5, None), ("", "/no/such/data")),
  "data.dev_dir": (("", "/abs/dev_data", NOT_UTF8, 5), ("dataset",)),
  "data.eval_dir": (("", "/abs/eval_data", NOT_UTF8, None), ("eval_dataset",)),
  "data.machine_types": (
    ("fan", ("",), (".ipynb_checkpoints",), (5,), (NOT_UTF8,), None),
    ((), ("fan", "valve")),
  ),
  "data.use_eval_train": ((None, 1, "yes"), (False,)),
  "data.dcase_year": ((2019, 2027, "2020", 2020.0, True), (None, 2021, 2026)),
  "data.channel": (("left", 0, "-1", None), ("", "mean", "0")),
  "data.use_supplemental": (("no",), (True,)),
  "data.group_by": (("id", None), ("type_section", "type_id")),
  "data.cache_dir": ((UNDER_A_FILE, NOT_UTF8, 5, None), ("", "/no/such/x")),
  "data.resample": (("yes",), (True,)),
  "data.skip_bad_files": ((1,), (True,)),
  "data.device_resident": (("auto", 0), (None, True, False)),
  "data.stream_chunk_clips": ((0, -1, 1.5), (1,)),
  "data.decode_workers": ((0,), (1,)),
  "data.feature_batch": ((0,), (1,)),
  "data.feature_batch_seconds": ((0.0, -1.0, NAN, INF, True), (0.5, 10**6)),
  "data.clip_seconds": ((0.0, -1.0, NAN, INF, "10"), (None, 2.0, 11.0)),
  "data.labels": (("attribute", None), ("section",)),
  "synth.year": ((2021, 2020.0, "2023"), (2023,)),
  "synth.seed": ((-1, 1.5), (0, 12345)),
  "synth.clips_per_id": ((0,), (1,)),
  "synth.seconds": ((0.2, 601.0, NAN, INF), (0.5, 600.0)),
  "features.sample_rate": ((0, -16000, 16000.5, NAN, "16000"), (22050,)),
  "features.n_fft": ((0, 1024.0, 10**10), (2048,)),
  "features.hop_length": ((0, 2048, 256.0), (1, 256)),
  "features.n_mels": ((0, 514, 16.0, True), (64,)),
  "features.power": ((0.0, NAN, INF, "2"), (1.0,)),
  "features.htk": ((1,), (True,)),
  "features.norm": (("l2",), (None,)),
  "features.pad_mode": (("edge",), ("reflect",)),
  "features.log_floor": ((0.0, -1e-10, NAN), (None, 1e-10)),
  "features.fmin": ((-1.0, 8000.0, NAN), (7999.0,)),
  "features.fmax": ((0.0, 8000.5, NAN), (None, 8000.0)),
  "model.name": (("GAN", None), ("IDNN",)),
  "model.frames": ((0, -5, 5.0), (3,)),
  # features.n_mels is 128; model.n_mels refers to it.
  "model.n_mels": ((0, 64), (128,)),
  "model.hidden": ((0,), (64,)),
  "model.depth": ((0,), (1,)),
  "model.bottleneck": ((0,), (4,)),
  "model.bn_momentum": ((1.5, NAN, True), (0.9, 1.0)),
  "model.bn_epsilon": ((0.0, NAN), (1e-5,)),
  "model.init": (("xavier",), ("torch",)),
  "model.vae": (("gaussian",), ("aeasd",)),
  "model.compute_dtype": (("float16",), ("bfloat16",)),
  "model.beta": ((-1.0, INF, NAN), (0.0, 1e6)),
  "model.kl_reduction": (("max",), ("sum",)),
  "model.bottlenecks": (("resnet", None), ("liu2022",)),
  "model.embedding": ((0, 1.5), (16,)),
  "model.arcface_s": ((0.0, NAN, -1.0), (64.0,)),
  "model.arcface_m": ((-0.1, 2.0, NAN), (0.0, 0.5)),
  "train.epochs": ((0, -1, 1.5), (1,)),
  "train.batch_size": ((0, True), (16,)),
  "train.learning_rate": ((0.0, NAN, INF, 1000.5), (1e3,)),
  "train.adam_eps": ((-1e-8, NAN), (0.0,)),
  "train.num_seeds": ((0,), (4,)),
  "train.validation_split": ((0.95, -0.1, NAN), (0.5, 0.9)),
  "train.select_by": (("best",), ("val_loss", "dev_auc", "dev_auc_pauc")),
  "train.lr_schedule": (("step", None), ("cosine",)),
  "train.cosine_start_epoch": ((-1, 1.5), (0, 300)),
  "train.cosine_final": ((-0.1, 1.5, NAN), (0.0, 1.0)),
  "train.select_every": ((0,), (1,)),
  "train.checkpoint_every": ((0,), (1,)),
  "train.keep_checkpoints": ((0,), (1,)),
  "train.log_every": ((0,), (10,)),
  "train.tensorboard": (("yes",), (True,)),
  "train.kernels": (("cuda",), ("xla", "jax_fused")),
  "train.pallas_interpret": (("yes",), (True,)),
  "score.method": (("l2",), ("mahalanobis",)),
  "score.pooling": (("median", None), ("gwrp",)),
  "score.gwrp_decay": ((1.5, NAN, False), (0.0,)),
  "score.threshold_percentile": ((0.0, 100.0, NAN, True), (99.999,)),
  "score.batch_windows": ((0,), (256,)),
  "score.batch_clips": ((0, 2.5), (1,)),
  "score.segment_percentile": ((0.0, 100.0, NAN), (50.0,)),
  "score.segment_bands": ((0,), (1,)),
}


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key


def test_the_settings_table_covers_every_setting():
  assert set(SETTINGS) == set(_leaves(default.get_config()))


def _with_exactly(config, setting, value):
  """The config as plain values, `setting` holding `value` of any type.

  ConfigDict turns 100 into 100.0 in a float field, and refuses other
  types, even under ignore_type().
  """
  values = config.to_dict()
  *sections, name = setting.split(".")
  holder = values
  for section in sections:
    holder = holder[section]
  holder[name] = value
  return ml_collections.ConfigDict(values)


def _cases(which):
  return [
    pytest.param(setting, value, id=f"{setting}={value!r}")
    for setting, values in SETTINGS.items()
    for value in values[which]
  ]


@pytest.mark.parametrize("setting,value", _cases(0))
def test_an_invalid_setting_is_refused_in_one_line_naming_it(setting, value):
  config = _with_exactly(default.get_config(), setting, value)
  with pytest.raises(AeasdError) as info:
    config_check.check_config(config)
  message = str(info.value)
  assert message.startswith(f"config.{setting}="), message
  assert len(message.splitlines()) == 1, message


@pytest.mark.parametrize("setting,value", _cases(1))
def test_a_valid_setting_passes(setting, value):
  config = default.get_config()
  *sections, name = setting.split(".")
  holder = config
  for section in sections:
    holder = holder[section]
  # As a config file or flag sets it: model.n_mels follows features.n_mels.
  holder[name] = value
  config_check.check_config(config)


# Each program's flags: flag -> values it must refuse, a value alone or with
# the other flags it needs to get that far ({file}: a regular file; {tmp}: a
# fresh folder; {workdir}: a workdir holding config.json and groups.json).
TRAIN_FLAGS = {
  "config": ["configs/nope.py", "configs", ""],
  "workdir": ["{file}/run", NOT_UTF8, "{tmp}/sweep[1]"],
  "coordinator_address": ["host0", "host0:port"],
  "num_processes": ["0", "x", "4"],
  "process_id": ["-1", "x", "2"],
}
EVALUATE_FLAGS = {
  "workdir": ["{file}/run", NOT_UTF8],
  "checkpoint": [("worst", {"wav": "{file}", "machine_type": "fan"})],
  "eval_ground_truth": ["{file}/truth.csv"],
  "partial_ground_truth": ["maybe", "true"],
  "plots": ["maybe"],
  "wav": ["{file}/x.wav"],
  "format": ["xml"],
  "machine_type": [("pump", {"wav": "{file}"})],
  "data_root": ["{file}/data", "{tmp}/nowhere"],
  "score": ["l2"],
  "cache_dir": ["{file}/cache", NOT_UTF8],
}
SYNTH_FLAGS = {
  "out": ["{file}/data", "{file}"],
  "year": ["2021", "x"],
  "seed": ["-1"],
  "clips_per_id": ["0"],
  "seconds": ["nan", "inf", "0.2", "1e9"],
  "machine_types": ["pump", ""],
}
PROGRAMS = {
  "train.py": (
    TRAIN_FLAGS,
    {"config": "configs/idnn.py", "workdir": "{tmp}/run"},
  ),
  "evaluate.py": (EVALUATE_FLAGS, {"workdir": "{workdir}"}),
  "-m aeasd_jax.synth": (SYNTH_FLAGS, {"out": "{tmp}/synth"}),
}
# A few settings end to end: train.py refuses them before any work.
TRAIN_SETTINGS = [
  "seed=-1",
  "synth.seconds=nan",
  "data.cache_dir={file}/cache",
  "data.dcase_year=2019",
]


def _flag_cases(program):
  """(name, args) of each case: the bad values, then --helpshort."""
  table, base = PROGRAMS[program]
  cases = []
  for flag, values in table.items():
    for entry in values:
      value, context = entry if isinstance(entry, tuple) else (entry, {})
      flags = {**base, **context, flag: value}
      cases.append((flag, [f"--{k}={v}" for k, v in flags.items()]))
  if program == "train.py":
    for setting in TRAIN_SETTINGS:
      name, value = setting.split("=", 1)
      flags = {**base, f"config.{name}": value}
      cases.append((f"config.{name}", [f"--{k}={v}" for k, v in flags.items()]))
  return cases + [("--helpshort", ["--helpshort"])]


@pytest.fixture(scope="module")
def flag_runs(tmp_path_factory):
  """{program: [(flag, args, result)]}, each case run in its own process."""
  tmp = tmp_path_factory.mktemp("flags")
  workdir = layout.Workdir(tmp / "workdir").make()
  workdir.write_config_values(json.loads(default.get_config().to_json()))
  workdir.write_groups(["fan"])
  places = {"file": A_FILE, "tmp": tmp, "workdir": workdir}
  runs = {}
  for program in PROGRAMS:
    cases = [
      (flag, [arg.format(**places) for arg in args])
      for flag, args in _flag_cases(program)
    ]
    done = subprocess.run(
      [sys.executable, str(REPO / "tests" / "forked_cli.py"), program],
      input=json.dumps([args for _, args in cases]),
      capture_output=True,
      text=True,
      cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      timeout=600,
      check=True,
    )
    results = json.loads(done.stdout)
    runs[program] = [(f, a, r) for (f, a), r in zip(cases, results)]
  return runs


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_flags_table_covers_every_flag(program, flag_runs):
  """The flags each program lists in --helpshort, its own ones."""
  (help_run,) = [r for f, _, r in flag_runs[program] if f == "--helpshort"]
  defined = set(re.findall(r"^  --(?:\[no\])?(\w+):", help_run["stdout"], re.M))
  assert defined, help_run
  assert defined == set(PROGRAMS[program][0])


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_bad_flag_value_is_one_error_line_naming_it(program, flag_runs):
  checked = 0
  for flag, args, result in flag_runs[program]:
    if flag == "--helpshort":
      continue
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2 and lines, (args, result)
    assert lines == [lines[-1]] and lines[-1].startswith("error: "), args
    # The flag by its name, or as the workdir or config setting it is.
    assert re.search(rf"(?<![\w.]){re.escape(flag)}\b", lines[-1]), lines
    checked += 1
  assert checked == sum(map(len, PROGRAMS[program][0].values())) + (
    len(TRAIN_SETTINGS) if program == "train.py" else 0
  )


def test_none_unsets_a_setting_through_the_real_flag_parser():
  """--config.data.dcase_year=None: tell the year from the names again."""
  code = (
    "import runpy, sys;"
    "flags = runpy.run_path('train.py', run_name='flags_only')['FLAGS'];"
    "from aeasd_jax import runtime;"
    "runtime.parse_flags(sys.argv);"
    "print(flags.config.data.dcase_year, flags.config.features.fmax)"
  )
  done = subprocess.run(
    [
      sys.executable,
      "-c",
      code,
      "--config=configs/dcase2023.py",
      "--config.data.dcase_year=None",
      # A later value wins, as for any flag.
      "--config.features.fmax=None",
      "--config.features.fmax=7000",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  # The file's own year is 2023.
  assert done.stdout.split() == ["None", "7000.0"]
