"""The archives of each DCASE Task 2 year: where they are and their checksums.

Every URL is the one the official baseline's download script fetches; every
md5 is read from a source named beside it. Where no source could be read for
an md5 or a byte size, the entry says "not published" and holds None: such
an archive is checked by the server's announced length while it downloads
and by the zip format's own CRC-32 of every member while it unpacks. Nothing
here was computed from a download.

Each zip holds one folder named after its machine type (`fan/train/...`),
which unpacks into the folder the training code reads (Archive.folder).
"""

import dataclasses

from aeasd_jax.data import dcase
from aeasd_jax.errors import AeasdError

# The three releases of every year: the development set, the additional
# training set (eval_data/<type>/train) and the evaluation set
# (eval_data/<type>/test, unlabelled).
PARTS = ("dev", "additional", "eval")
# From 2022 the official baseline keeps the type folders in raw/.
FIRST_RAW_YEAR = 2022


@dataclasses.dataclass(frozen=True)
class Archive:
  """One zip of one machine type, and what checks it."""

  year: int
  part: str  # One of PARTS.
  machine_type: str
  url: str
  md5: str | None  # None: not published (see the year's comment).
  size: int | None = None  # Bytes, where a source gives them.

  @property
  def file_name(self):
    return self.url.rsplit("/", 1)[1]

  @property
  def folder(self):
    """The folder under the data root that receives the type's folder."""
    subset = "dev_data" if self.part == "dev" else "eval_data"
    if self.year >= FIRST_RAW_YEAR:
      return f"{subset}/{dcase.RAW_FOLDER}"
    return subset


def _part(year, part, base, file_names, md5s=None):
  """The archives at `base`/<file name>, one per machine type.

  Args:
    file_names: {machine_type: file name}.
    md5s: {file name: md5}; None where the year's md5s are not published.
  """
  return tuple(
    Archive(
      year,
      part,
      machine_type,
      f"{base}/{name}",
      None if md5s is None else md5s[name],
    )
    for machine_type, name in file_names.items()
  )


def _named(form, machine_types):
  return {t: form.format(t) for t in machine_types}


# DCASE 2020. URLs: nttcslab/dcase2023_task2_baseline_ae,
# tools/data_download_2020.sh (the records also in
# y-kawagu/dcase2020_task2_baseline, README.md). md5s: soundata/soundata,
# soundata/datasets/dcase2020task2.py (REMOTES), for the files of
# https://zenodo.org/record/3678171, /3727685 and /3841772.
_TYPES_2020 = tuple("ToyCar ToyConveyor fan valve slider pump".split())
_MD5_2020 = {
  "dev_data_fan.zip": "649bdfc06263ae7a838963f43b6641e6",
  "dev_data_pump.zip": "90e7091ef722b7238a7f1009365779cd",
  "dev_data_slider.zip": "da24a757719f0d94d5aa2d646bbfdc86",
  "dev_data_ToyCar.zip": "4dec75ca8d9f666aa9e4c1894a740501",
  "dev_data_ToyConveyor.zip": "03b6aa1bfd09a39d53af0ba39f71fa91",
  "dev_data_valve.zip": "34d2672f55bb041589ef79c10dc89934",
  "eval_data_train_fan.zip": "567798854130c8019df8b664c095ed1e",
  "eval_data_train_pump.zip": "4e33ae9c0db5cc88437675f5e317caee",
  "eval_data_train_slider.zip": "f84f186f4295fc23754abcdd1b0580a7",
  "eval_data_train_ToyCar.zip": "a5d4ccd498af70b04dd74b644b820006",
  "eval_data_train_ToyConveyor.zip": "0e808ac0b761e9fb13d5e0c65caff00d",
  "eval_data_train_valve.zip": "057cdd560caffb8305449541afd28c6d",
  "eval_data_test_fan.zip": "1eb9356a768cadfd0f2e59a5c57e578b",
  "eval_data_test_pump.zip": "23a8f8f924be218c69df67fe07360348",
  "eval_data_test_slider.zip": "0193c769073840332ce3aad84b1ccaa2",
  "eval_data_test_ToyCar.zip": "bea2bdd612f616be8f2b8eb087b32c7c",
  "eval_data_test_ToyConveyor.zip": "ccfcc9847c7d3404d7ee9d6d9e0b2ba2",
  "eval_data_test_valve.zip": "f69c551d2088691050d20cccca9d631c",
}
_2020 = (
  *_part(
    2020,
    "dev",
    "https://zenodo.org/record/3678171/files",
    _named("dev_data_{}.zip", _TYPES_2020),
    _MD5_2020,
  ),
  *_part(
    2020,
    "additional",
    "https://zenodo.org/record/3727685/files",
    _named("eval_data_train_{}.zip", _TYPES_2020),
    _MD5_2020,
  ),
  *_part(
    2020,
    "eval",
    "https://zenodo.org/record/3841772/files",
    _named("eval_data_test_{}.zip", _TYPES_2020),
    _MD5_2020,
  ),
)

# DCASE 2021. URLs: nttcslab/dcase2023_task2_baseline_ae,
# tools/data_download_2021.sh (records 4562016, 4660992, 4884786). md5: not
# published (none, nor a byte size, could be read from any source here).
_TYPES_2021 = tuple("fan gearbox pump slider ToyCar ToyTrain valve".split())
_2021 = (
  *_part(
    2021,
    "dev",
    "https://zenodo.org/record/4562016/files",
    _named("dev_data_{}.zip", _TYPES_2021),
  ),
  *_part(
    2021,
    "additional",
    "https://zenodo.org/record/4660992/files",
    _named("eval_data_{}_train.zip", _TYPES_2021),
  ),
  *_part(
    2021,
    "eval",
    "https://zenodo.org/record/4884786/files",
    _named("eval_data_{}_test.zip", _TYPES_2021),
  ),
)

# DCASE 2022. URLs: nttcslab/dcase2023_task2_baseline_ae,
# tools/data_download_2022.sh (records 6355122, 6462969, 6586456). md5: not
# published (none, nor a byte size, could be read from any source here).
_TYPES_2022 = tuple("bearing fan gearbox slider ToyCar ToyTrain valve".split())
_2022 = (
  *_part(
    2022,
    "dev",
    "https://zenodo.org/record/6355122/files",
    _named("dev_{}.zip", _TYPES_2022),
  ),
  *_part(
    2022,
    "additional",
    "https://zenodo.org/record/6462969/files",
    _named("eval_data_{}_train.zip", _TYPES_2022),
  ),
  *_part(
    2022,
    "eval",
    "https://zenodo.org/record/6586456/files",
    _named("eval_data_{}_test.zip", _TYPES_2022),
  ),
)

# DCASE 2023: the dev set's types are not the eval set's. URLs:
# nttcslab/dcase2023_task2_baseline_ae, tools/data_download_2023.sh. md5s:
# soundata/soundata, soundata/datasets/dcase23_task2.py (REMOTES), for the
# files of https://zenodo.org/records/7882613, /7830345 and /7860847.
_DEV_TYPES = _TYPES_2022
_EVAL_TYPES_2023 = tuple(
  "bandsaw grinder shaker ToyDrone ToyNscale ToyTank Vacuum".split()
)
_MD5_2023 = {
  "dev_bearing.zip": "8a813bc8d8f156b5395bfccdfac7673c",
  "dev_fan.zip": "9348591e96fb0ad499a1e33b082562fc",
  "dev_gearbox.zip": "b6e55f6a31faa0fc8569ec0afdd53ccf",
  "dev_slider.zip": "b3f8dee36b4718c36d659a4fd1c4afe0",
  "dev_ToyCar.zip": "4e3bf15f4101ed4ed4f1fecde2e2b2a3",
  "dev_ToyTrain.zip": "6b02a6c65eebb3b8b1ae59a6b25bb897",
  "dev_valve.zip": "b2051a2022eadb53cd97581120811cae",
  "eval_data_bandsaw_train.zip": "9274dfe63de028743823f1123f8b4b47",
  "eval_data_grinder_train.zip": "17569c1f9df23621a0dbabc430684a35",
  "eval_data_shaker_train.zip": "35f821b5645b731fb5a1750e33b95fc3",
  "eval_data_ToyDrone_train.zip": "7fea367d1384a1521ae24f72203238de",
  "eval_data_ToyNscale_train.zip": "9332822f3e47afd984c01f2ecb5ca3af",
  "eval_data_ToyTank_train.zip": "b1fd3ab7de7561290df2d477de1c9d33",
  "eval_data_Vacuum_train.zip": "1c8de33d9a8c7850a1f7aaddb97d87be",
  "eval_data_bandsaw_test.zip": "2a8e8f39f6584ab366a8f4da52d4d7a6",
  "eval_data_grinder_test.zip": "631b3e1608b6077772829a6e68c82c77",
  "eval_data_shaker_test.zip": "ba98c98caa96051ec80e24e44b8fca56",
  "eval_data_ToyDrone_test.zip": "fdae7b8d1f4cadb2bea88bc93e2367db",
  "eval_data_ToyNscale_test.zip": "62f5f5043d8fb3a305b1c2e1025872de",
  "eval_data_ToyTank_test.zip": "f5639bf58c47169c622751f19c6fc321",
  "eval_data_Vacuum_test.zip": "a32524fd8c45b574a560685b38acc4e1",
}
_2023 = (
  *_part(
    2023,
    "dev",
    "https://zenodo.org/record/7882613/files",
    _named("dev_{}.zip", _DEV_TYPES),
    _MD5_2023,
  ),
  *_part(
    2023,
    "additional",
    "https://zenodo.org/record/7830345/files",
    _named("eval_data_{}_train.zip", _EVAL_TYPES_2023),
    _MD5_2023,
  ),
  *_part(
    2023,
    "eval",
    "https://zenodo.org/record/7860847/files",
    _named("eval_data_{}_test.zip", _EVAL_TYPES_2023),
    _MD5_2023,
  ),
)

# DCASE 2024. URLs: nttcslab/dcase2023_task2_baseline_ae,
# tools/data_download_2024.sh (records 10902294, 11259435, 11363076; the
# _r2 files replaced two additional training sets, its CHANGELOG says). md5:
# not published (none, nor a byte size, could be read from any source here).
_EVAL_TYPES_2024 = tuple(
  "3DPrinter AirCompressor Scanner ToyCircuit HoveringDrone HairDryer"
  " ToothBrush RoboticArm BrushlessMotor".split()
)
_2024 = (
  *_part(
    2024,
    "dev",
    "https://zenodo.org/record/10902294/files",
    _named("dev_{}.zip", _DEV_TYPES),
  ),
  *_part(
    2024,
    "additional",
    "https://zenodo.org/records/11259435/files",
    {
      **_named("eval_data_{}_train.zip", _EVAL_TYPES_2024),
      "3DPrinter": "eval_data_3DPrinter_train_r2.zip",
      "RoboticArm": "eval_data_RoboticArm_train_r2.zip",
    },
  ),
  *_part(
    2024,
    "eval",
    "https://zenodo.org/records/11363076/files",
    _named("eval_data_{}_test.zip", _EVAL_TYPES_2024),
  ),
)

# DCASE 2025. URLs: nttcslab/dcase2023_task2_baseline_ae,
# tools/data_download_2025.sh (records 15097779, 15392814, 15519362). md5:
# not published (none, nor a byte size, could be read from any source here).
_EVAL_TYPES_2025 = tuple(
  "ToyRCCar ToyPet HomeCamera AutoTrash Polisher ScrewFeeder BandSealer"
  " CoffeeGrinder".split()
)
_2025 = (
  *_part(
    2025,
    "dev",
    "https://zenodo.org/records/15097779/files",
    _named("dev_{}.zip", _DEV_TYPES),
  ),
  *_part(
    2025,
    "additional",
    "https://zenodo.org/records/15392814/files",
    _named("eval_data_{}_train.zip", _EVAL_TYPES_2025),
  ),
  *_part(
    2025,
    "eval",
    "https://zenodo.org/records/15519362/files",
    _named("eval_data_{}_test.zip", _EVAL_TYPES_2025),
  ),
)

TABLE = {
  2020: _2020,
  2021: _2021,
  2022: _2022,
  2023: _2023,
  2024: _2024,
  2025: _2025,
}

# Years the layouts know (dcase.YEARS) whose archives this table leaves out,
# and why. For 2026 the baseline repository lists dev archives (record
# 19336329, one already replaced: dev_ToyCar_r2.zip) and additional training
# archives (record 20151556), and Zenodo record 20437238 holds an evaluation
# set, but no md5 or byte size of any of them could be read here, and files
# replaced during a running challenge would not match a table written now.
UNPUBLISHED = {
  2026: "not in this table yet (its archives were still being published"
  " and replaced when it was written)",
}


def select(year, parts=PARTS, machine_types=()):
  """The archives of `year`, of the given parts and types (all if empty).

  Raises:
    AeasdError: naming the setting that fits no archive.
  """
  if year in UNPUBLISHED:
    raise AeasdError(
      f"--year={year}: {UNPUBLISHED[year]}; expected one of {sorted(TABLE)}"
    )
  if year not in TABLE:
    raise AeasdError(f"--year={year}: expected one of {sorted(TABLE)}")
  unknown = sorted(set(parts) - set(PARTS))
  if unknown or not parts:
    raise AeasdError(
      f"--parts={','.join(parts)}: expected a non-empty subset of"
      f" {','.join(PARTS)}"
    )
  chosen = [a for a in TABLE[year] if a.part in parts]
  types = sorted({a.machine_type for a in chosen})
  missing = sorted(set(machine_types) - set(types))
  if missing:
    raise AeasdError(
      f"--machine_types: no archive of {missing} among DCASE {year}'s"
      f" {','.join(parts)} archives; expected some of {types}"
    )
  return [
    a for a in chosen if not machine_types or a.machine_type in machine_types
  ]
