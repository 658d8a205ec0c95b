"""Where aeasd_jax keeps what it can recompute: features, synthetic data, XLA.

Its own module, so that the entry points' setup finds the folder without
importing the audio and cache stack.
"""

import os
import pathlib


def root(config):
  """config.data.cache_dir, or the user's cache folder when it is empty."""
  if config.data.cache_dir:
    return pathlib.Path(config.data.cache_dir).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return pathlib.Path(base) / "aeasd_jax"
