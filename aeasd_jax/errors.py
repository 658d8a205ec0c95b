"""The exceptions entry points print as one line, and how messages show names.

AeasdError is bad user input: files, folders, config values. Entry points
print its message without a traceback, so every message must name the file
or setting and say what was expected.
"""

import json


class AeasdError(Exception):
  """A problem the user can fix; the message says which file or setting."""


class Interrupted(Exception):
  """The user stopped a run (Ctrl-C); the message says where it resumes."""


def shown(text):
  """`text` as one printable field of a line: quoted and escaped if needed.

  A file name may hold tabs, newlines or other control characters, which
  printed raw would forge fields or lines of the output.
  """
  text = str(text)
  if text.isprintable() and not text.startswith('"'):
    return text
  return json.dumps(text, ensure_ascii=False)
