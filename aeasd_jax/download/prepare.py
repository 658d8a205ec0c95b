"""One DCASE year, downloaded, checked and unpacked where training reads it.

Everything in flight lives in <root>/.download/dcase<year>/: `.partial`
downloads, checked archives, the extraction's work folders, and a `.done`
marker per archive unpacked, which is what a rerun skips.
"""

import os
import pathlib
import shutil
import sys

from aeasd_jax.download import archives
from aeasd_jax.download import fetch
from aeasd_jax.download import unpack
from aeasd_jax.errors import AeasdError

STATE_FOLDER = ".download"
MIRROR_ENV = "AEASD_DCASE_MIRROR"
# Unpacked bytes per archive byte, for the free space check: deflate shrinks
# the 16-bit PCM of noisy machine recordings by a few percent only, so a zip
# of WAVs unpacks to about its own size; 1.1 leaves a margin.
UNPACK_FACTOR = 1.1


def prepare(
  year,
  root,
  *,
  parts=archives.PARTS,
  machine_types=(),
  mirror=None,
  stream=None,
):
  """Gets DCASE `year`'s archives ready to train on under `root`.

  Args:
    year: the DCASE year, one of archives.TABLE.
    root: the data root, e.g. /data/dcase2023; one per year.
    parts: some of archives.PARTS.
    machine_types: the types to get; all when empty.
    mirror: a URL replacing every archive URL's folder, for a local copy.
    stream: where the plan and the progress are written; sys.stderr if None.

  Returns:
    The root as a pathlib.Path.

  Raises:
    AeasdError: a bad setting, a failed download or check, too little disk.
  """
  stream = stream or sys.stderr
  chosen = archives.select(year, parts, machine_types)
  root = pathlib.Path(root).expanduser()
  state = _state_folder(root, year)
  todo = [a for a in chosen if not _marker(state, a).exists()]
  urls = {a: _url(a, mirror) for a in todo}
  sizes = {a: _sizes(a, state, urls[a]) for a in todo}
  _announce(year, root, len(chosen), sizes, stream)
  _check_space(root, sizes.values())
  for number, archive in enumerate(todo, 1):
    stream.write(f"[{number}/{len(todo)}] {archive.file_name}\n")
    try:
      _prepare_one(archive, urls[archive], root, state, stream)
    except OSError as e:  # A full disk, a folder that cannot be written.
      raise AeasdError(f"{archive.file_name}: {e}") from None
  return root


def _state_folder(root, year):
  """<root>/.download/dcase<year>, refused if another year used the root."""
  state = root / STATE_FOLDER / f"dcase{year}"
  if state.parent.is_dir():
    others = sorted(p.name for p in state.parent.iterdir() if p != state)
    if others:
      raise AeasdError(
        f"--root={root}: already holds {others[0]}'s data"
        f" ({state.parent}); expected one root per DCASE year"
      )
  return state


def _marker(state, archive):
  return state / f"{archive.file_name}.done"


def _url(archive, mirror):
  if not mirror:
    return archive.url
  if not mirror.startswith(("http://", "https://")):
    raise AeasdError(
      f"mirror {mirror} (--mirror or ${MIRROR_ENV}): expected an http:// or"
      " https:// URL of a folder holding the year's archives"
    )
  return f"{mirror.rstrip('/')}/{archive.file_name}"


def _sizes(archive, state, url):
  """(bytes still to download, archive size); None where nothing tells."""
  checked = state / archive.file_name
  if checked.exists():
    return 0, checked.stat().st_size
  size = archive.size if archive.size is not None else fetch.remote_size(url)
  if size is None:
    return None, None
  partial = state / f"{archive.file_name}.partial"
  have = partial.stat().st_size if partial.exists() else 0
  return max(size - have, 0), size


def _announce(year, root, count, sizes, stream):
  done = count - len(sizes)
  if not sizes:
    stream.write(f"DCASE {year}: all {count} archives already in {root}\n")
    return
  unknown = sum(download is None for download, _ in sizes.values())
  download = sum(d for d, _ in sizes.values() if d is not None)
  line = (
    f"DCASE {year}: {len(sizes)} archive{'s' * (len(sizes) > 1)} to get"
    f" into {root}"
    f" ({done} already there), {fetch.human_size(download)} to download"
  )
  if unknown:
    line += f" and {unknown} of a size the server does not tell"
  stream.write(line + "\n")


def _check_space(root, sizes):
  download = sum(d for d, _ in sizes if d is not None)
  unpacked = UNPACK_FACTOR * sum(s for _, s in sizes if s is not None)
  existing = next(p for p in (root, *root.parents) if p.exists())
  free = shutil.disk_usage(existing).free
  if free < download + unpacked:
    raise AeasdError(
      f"--root={root}: {fetch.human_size(free)} free, expected at least"
      f" {fetch.human_size(download + unpacked)}:"
      f" {fetch.human_size(download)} to download and"
      f" {fetch.human_size(unpacked)} unpacked (taken as {UNPACK_FACTOR}"
      " times the archives' size)"
    )


def _prepare_one(archive, url, root, state, stream):
  checked = state / archive.file_name
  if not checked.exists():
    state.mkdir(parents=True, exist_ok=True)
    partial = state / f"{archive.file_name}.partial"
    fetch.fetch(url, partial, stream=stream)
    _verify(archive, partial)
    os.replace(partial, checked)
  try:
    unpack.unpack(checked, archive.machine_type, root / archive.folder, state)
  except unpack.DamagedArchive as e:
    checked.unlink()
    raise AeasdError(f"{e}; removed it, rerun to download it again") from None
  _marker(state, archive).write_text(f"{archive.url} {archive.md5}\n")
  checked.unlink()


def _verify(archive, partial):
  """Checks the download against the table; a mismatch is removed."""
  if archive.size is not None and partial.stat().st_size != archive.size:
    actual = partial.stat().st_size
    partial.unlink()
    raise AeasdError(
      f"{archive.file_name}: {actual} bytes, expected {archive.size} (the"
      " table in aeasd_jax/download/archives.py); removed the download,"
      " rerun to fetch it again"
    )
  if archive.md5 is not None:
    actual = fetch.md5_of(partial)
    if actual != archive.md5:
      partial.unlink()
      raise AeasdError(
        f"{archive.file_name}: md5 {actual}, expected {archive.md5} (the"
        " table in aeasd_jax/download/archives.py); removed the download,"
        " rerun to fetch it again"
      )
