"""`python -m aeasd_jax.download --year=2023 --root=/data/dcase2023`.

Downloads, checks and unpacks a DCASE Task 2 year into the folders that
train.py reads; a rerun resumes what was interrupted and skips what is done.
"""

import os
import sys

from absl import flags

from aeasd_jax.download import archives
from aeasd_jax.download import prepare
from aeasd_jax.errors import AeasdError

_HELP = ("-h", "--help", "--helpfull")


def _define_flags(values):
  """The flags, on their own FlagValues: run() can be called many times."""
  flags.DEFINE_integer(
    "year",
    None,
    f"DCASE year, one of {sorted(archives.TABLE)}.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "root",
    None,
    "Data root to fill, one per year, e.g. /data/dcase2023.",
    flag_values=values,
  )
  flags.DEFINE_list(
    "parts",
    list(archives.PARTS),
    "Which releases: dev (development set), additional (additional training"
    " set, eval_data/<type>/train), eval (evaluation set,"
    " eval_data/<type>/test).",
    flag_values=values,
  )
  flags.DEFINE_list(
    "machine_types",
    [],
    "Machine types to get; all of the year's if empty.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "mirror",
    None,
    "URL of a folder holding the year's archives under their names, in"
    f" place of the official URLs; default ${prepare.MIRROR_ENV}.",
    flag_values=values,
  )
  flags.mark_flags_as_required(["year", "root"], flag_values=values)


def run(argv, environ=os.environ):
  """Runs the command line `argv`; returns the exit code.

  Every failure is one `error: ...` line on stderr and exit code 2.
  """
  values = flags.FlagValues()
  _define_flags(values)
  if set(argv[1:]) & set(_HELP):
    print(values.get_help())
    return 0
  try:
    rest = values(argv)
  except flags.Error as e:
    return _fail(f"error: {e}", 2)
  if rest[1:]:
    return _fail(
      f"error: unexpected argument {rest[1]!r}; expected flags only", 2
    )
  try:
    root = prepare.prepare(
      values.year,
      values.root,
      parts=values.parts,
      machine_types=values.machine_types,
      mirror=values.mirror or environ.get(prepare.MIRROR_ENV),
    )
  except AeasdError as e:
    return _fail(f"error: {e}", 2)
  except KeyboardInterrupt:
    return _fail(
      "interrupted: stopped by Ctrl-C; rerun the same command to resume", 130
    )
  print(root)
  return 0


def _fail(line, code):
  sys.stdout.flush()
  sys.stderr.write(line + "\n")
  sys.stderr.flush()
  return code


if __name__ == "__main__":
  sys.exit(run(sys.argv))
