"""The one exception type for bad user input: files, folders, config values.

Entry points catch it and print its message without a traceback, so every
message must name the file or setting and say what was expected.
"""


class AeasdError(Exception):
  """A problem the user can fix; the message says which file or setting."""
