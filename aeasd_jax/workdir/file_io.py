"""Workdir files: written atomically as strict JSON, read with checks.

A file is written to a temporary name and renamed over the old one, so a run
killed mid-write leaves the previous version intact. A damaged file is named
when it is read, before any work depends on it.
"""

import contextlib
import json
import math
import numbers
import os
import pathlib
import secrets
import stat

import jax

from aeasd_jax.errors import AeasdError

_JSON_NAMES = {
  dict: "object",
  list: "list",
  str: "string",
  int: "number",
  float: "number",
  bool: "boolean",
  type(None): "null",
}


@contextlib.contextmanager
def atomic_open(path, mode="w"):
  """Opens a temporary file that replaces `path` only if the block succeeds.

  The file gets the mode a plain open() would give it: that of the file it
  replaces, or for a new file 0666 less the umask.
  """
  path = pathlib.Path(path)
  fd, tmp = _create_beside(path)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def _create_beside(path):
  # O_CREAT applies the umask, which mkstemp's fixed 0600 ignores; reading
  # the umask with os.umask would change it for every thread meanwhile.
  while True:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    try:
      fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
      break
    except FileExistsError:
      continue
  try:
    os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
  except FileNotFoundError:
    pass
  except BaseException:
    os.close(fd)
    os.unlink(tmp)
    raise
  return fd, tmp


def dumps_json(value, **kwargs):
  """json.dumps, with each non-finite float written as null.

  json.dumps would write Infinity and NaN, which strict JSON parsers (jq,
  JavaScript, most languages' libraries) reject.
  """
  return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def _finite_or_none(value):
  if isinstance(value, dict):
    return {k: _finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_none(v) for v in value]
  if isinstance(value, numbers.Real) and not isinstance(
    value, numbers.Integral
  ):
    return float(value) if math.isfinite(value) else None
  return value


def write_error(path, error):
  """The AeasdError for an OSError while writing `path`."""
  return AeasdError(
    f"cannot write {path} ({error.strerror or error});"
    " expected a writable folder with free space"
  )


def write_text(path, text):
  """Atomically writes `text` to `path`, from process 0 only."""
  # In a multi-process run every process computes the same results; one
  # writer keeps a shared filesystem consistent.
  if jax.process_index() != 0:
    return
  try:
    with atomic_open(path) as f:
      f.write(text)
  except OSError as e:
    raise write_error(path, e) from None


def write_json(path, value, **kwargs):
  """Atomically writes `value` to `path` as strict JSON, from process 0 only."""
  write_text(path, dumps_json(value, **kwargs))


def read_json(path, expected_type, hint):
  """The JSON value in `path`, which must be an `expected_type` (dict, list).

  Args:
    path: the file.
    expected_type: the Python type the top-level value must have.
    hint: what to do about a damaged file, for the error message.

  Raises:
    AeasdError: the file is missing, unreadable, not JSON or of another type.
  """
  path = pathlib.Path(path)
  text = read_bytes(path, hint)
  if text is None:
    raise missing_error(path)
  try:
    value = json.loads(text)
  except ValueError as e:  # Also a UnicodeDecodeError.
    raise damaged(path, f"not valid JSON: {e}", hint) from None
  if not isinstance(value, expected_type):
    found = _JSON_NAMES.get(type(value), type(value).__name__)
    raise damaged(
      path,
      f"expected a JSON {_JSON_NAMES[expected_type]},"
      f" found {'an' if found[0] in 'aeiou' else 'a'} {found}",
      hint,
    )
  return value


def read_bytes(path, hint):
  """The bytes of `path`, or None when it does not exist.

  Raises:
    AeasdError: the file exists but cannot be read; `hint` says what to do.
  """
  try:
    return pathlib.Path(path).read_bytes()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise AeasdError(
      f"{path}: cannot read ({e.strerror or e}); {hint}"
    ) from None


def missing_error(path):
  """The AeasdError for a workdir file that does not exist."""
  return AeasdError(f"{path}: missing; expected a workdir written by train.py")


def damaged(path, what, hint):
  return AeasdError(f"{path}: damaged ({what}); {hint}")
