"""Helpers shared by test modules: the tiny config and trained weights."""

import contextlib
import pathlib
import signal

import chex

from aeasd_jax.training import run_identity
from aeasd_jax.training import restore
from aeasd_jax.workdir import layout
from configs import default


# SIGINT and SIGTERM as a Python process has them unless it inherited one
# as ignored.
PYTHON_SIGNALS = {
  signal.SIGINT: signal.default_int_handler,
  signal.SIGTERM: signal.SIG_DFL,
}


@contextlib.contextmanager
def signal_handlers(handlers):
  """Sets {signum: handler} for the block, then puts back what was there.

  Tests that send signals set what they expect, whatever the test process
  inherited: a background job of a non-interactive shell (`pytest &` in a
  script) starts with SIGINT ignored. A child process started in the block
  inherits them, a Python handler as SIG_DFL (exec resets it).
  """
  previous = {s: signal.signal(s, h) for s, h in handlers.items()}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def make_tree(root, files):
  """Creates empty files at the given paths under `root`; returns the root.

  Discovery only looks at names, so the files need no audio in them.
  """
  root = pathlib.Path(root)
  for relative in files:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
  return root


def tiny_config(root, cache_dir):
  """A fast config: a small network and few epochs on a small dataset."""
  config = default.get_config()
  config.data.root = str(root)
  config.data.cache_dir = str(cache_dir)
  config.compile_cache_dir = "off"
  config.features.n_mels = 16
  config.model.hidden = 16
  config.model.depth = 2
  config.model.bottleneck = 4
  config.train.epochs = 2
  config.train.batch_size = 64
  config.train.checkpoint_every = 1
  # Most tests exercise model selection, which "last" (the default) skips.
  config.train.select_by = "val_loss"
  config.score.batch_windows = 256
  return config


def latest_weights(workdir):
  """(params, batch_stats) of a workdir's latest checkpoint."""
  config = run_identity.load_config(workdir)
  _, params, batch_stats, _ = restore.load_weights(
    config,
    layout.Workdir(workdir),
    layout.Workdir(workdir).read_groups(),
    "latest",
  )
  return params, batch_stats


def assert_best_equals_latest(workdir):
  """The weights evaluate.py takes as "best" are the latest, not the initial."""
  config = run_identity.load_config(workdir)
  groups = layout.Workdir(workdir).read_groups()
  best = restore.load_weights(config, layout.Workdir(workdir), groups, "best")[
    1:3
  ]
  latest = restore.load_weights(
    config, layout.Workdir(workdir), groups, "latest"
  )[1:3]
  chex.assert_trees_all_equal(best, latest)
