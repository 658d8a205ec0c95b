"""Runs a program once per argument list, each run in a process of its own.

`python tests/forked_cli.py PROGRAM < cases.json` imports what the entry
points import once, then forks a child per case that runs PROGRAM
(`train.py`, `evaluate.py` or `-m aeasd_jax.synth`) with those arguments, as
`python PROGRAM ARGS...` would: its own flags, exit code, stdout and
stderr. A case that fails while parsing its flags then takes a fraction of
a second instead of the seconds it takes to import JAX again. Prints a JSON
list of {"code", "stdout", "stderr"}, one per case.

The parent never defines a flag nor starts a JAX backend, so each child
starts from what a fresh process has.
"""

import json
import os
import runpy
import sys
import tempfile
import traceback

# Imported for their import time, paid here once instead of in every child.
import jax  # noqa: F401
from ml_collections import config_flags  # noqa: F401

from aeasd_jax.evaluation import evaluate  # noqa: F401
from aeasd_jax.evaluation import recordings  # noqa: F401
from aeasd_jax.training import train  # noqa: F401


def _run(program):
  # sys.path[0] as the interpreter sets it: the working folder for -m, the
  # script's folder for a script (where train.py finds configs/).
  if program.startswith("-m "):
    sys.path[0] = os.getcwd()
    runpy.run_module(program[3:], run_name="__main__", alter_sys=True)
  else:
    sys.path[0] = os.path.dirname(os.path.abspath(program))
    runpy.run_path(program, run_name="__main__")


def _child(program, args, out, err):
  """Runs the program in this forked process, then exits with its code."""
  os.dup2(out, 1)
  os.dup2(err, 2)
  code = 0
  try:
    sys.argv = [program, *args]
    _run(program)
  except SystemExit as e:
    if isinstance(e.code, int) or e.code is None:
      code = e.code or 0
    else:  # sys.exit("message"), as the interpreter reports it.
      print(e.code, file=sys.stderr)
      code = 1
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def _case(program, args):
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if not pid:
      _child(program, args, out.fileno(), err.fileno())
    _, status = os.waitpid(pid, 0)
    texts = []
    for f in (out, err):
      f.seek(0)
      texts.append(f.read().decode("utf-8", "backslashreplace"))
  return {
    "code": os.waitstatus_to_exitcode(status),
    "stdout": texts[0],
    "stderr": texts[1],
  }


def main():
  program = sys.argv[1]
  cases = json.load(sys.stdin)
  json.dump([_case(program, args) for args in cases], sys.stdout)


if __name__ == "__main__":
  main()
