"""Checked extraction of one DCASE zip into the folders training reads.

A zip is extracted into a work folder outside the data folders; then its
machine type's folder, or each of its subfolders when another archive
already brought that type (eval train and eval test), is renamed into place.
So the data folders only ever hold complete folders.
"""

import shutil
import zipfile
import zlib

from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import shown


class DamagedArchive(AeasdError):
  """The zip cannot be read to its end: a damaged or truncated download."""


def unpack(archive, machine_type, destination, work):
  """Extracts `archive` into `destination`/`machine_type`.

  Args:
    archive: the zip, whose members must all lie under `machine_type`/.
    machine_type: the archive's one top folder.
    destination: the folder that receives the type folder, e.g.
      <root>/dev_data/raw.
    work: a folder on the same file system for the extraction; what this
      call puts there is gone when it returns.

  Raises:
    DamagedArchive: a member fails its CRC-32 or the zip is unreadable.
    AeasdError: a member's path is absolute, climbs out with `..`, or lies
      outside `machine_type`/; nothing is extracted then.
  """
  staging = work / f"unpack-{archive.name}"
  replaced = work / f"replaced-{archive.name}"
  for leftover in (staging, replaced):  # From an interrupted run.
    shutil.rmtree(leftover, ignore_errors=True)
  try:
    with zipfile.ZipFile(archive) as zipped:
      _check_members(zipped.namelist(), machine_type, archive)
      # Reading each member to its end checks its CRC-32.
      zipped.extractall(staging)
    _move_into_place(
      staging / machine_type, destination / machine_type, replaced
    )
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    raise DamagedArchive(f"{archive}: not a readable zip ({e})") from None
  finally:
    for folder in (staging, replaced):
      shutil.rmtree(folder, ignore_errors=True)


def _check_members(names, machine_type, archive):
  for name in names:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
      raise AeasdError(
        f"{archive}: member {shown(name)} would be written outside the"
        " folder it unpacks into; refused it (expected relative paths"
        f" without ..); the archive stays at {archive}"
      )
    if parts[0] != machine_type:
      raise AeasdError(
        f"{archive}: member {shown(name)} is not in {machine_type}/;"
        " expected all of the archive under its machine type's folder"
      )


def _move_into_place(source, target, replaced):
  """Renames `source` to `target`, or its entries into an existing one."""
  if not target.exists():
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    return
  for entry in sorted(source.iterdir()):
    placed = target / entry.name
    if placed.is_dir():
      # A run that stopped after moving it in and before marking the
      # archive done; this copy replaces it whole.
      replaced.mkdir(exist_ok=True)
      placed.rename(replaced / entry.name)
    entry.replace(placed)
