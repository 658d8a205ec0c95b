"""The exceptions entry points print as one line, and how messages show names.

AeasdError is bad user input: files, folders, config values. Entry points
print its message without a traceback, so every message must name the file
or setting and say what was expected.
"""

import json
import signal


class AeasdError(Exception):
  """A problem the user can fix; the message says which file or setting."""


class Interrupted(Exception):
  """A signal stopped a run; the message says where it resumes.

  exit_code is the shell's for the signal, 128 + its number: 130 for Ctrl-C
  (SIGINT), 143 for SIGTERM (a preemption), so a job scheduler or a script
  tells the two apart.
  """

  def __init__(self, message, signum=signal.SIGINT):
    super().__init__(message)
    self.exit_code = 128 + signum


def shown(text):
  """`text` as one printable field of a line: quoted and escaped if needed.

  A file name may hold tabs, newlines or other control characters, which
  printed raw would forge fields or lines of the output; one that starts
  with a space could pass for an indented line (evaluate.py --wav's
  segment lines).
  """
  text = str(text)
  if text.isprintable() and not text.startswith(('"', " ")):
    return text
  return json.dumps(text, ensure_ascii=False)
