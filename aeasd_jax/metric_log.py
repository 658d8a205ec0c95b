"""Per-epoch metrics: metrics.jsonl in the workdir, TensorBoard when asked.

Only process 0 writes, so multi-process runs log once.
"""

import contextlib
import json
import pathlib
import time

import jax

from aeasd_jax.errors import AeasdError


class MetricWriter:
  """Appends one JSON object per record; mirrors scalars to TensorBoard."""

  def __init__(self, workdir, tensorboard=False):
    self.active = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.summary = None
    if self.active and tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise AeasdError(
            "config.train.tensorboard=True needs the tensorboard extra:"
            " pip install -e .[tensorboard]") from None
      self.summary = tensorboardX.SummaryWriter(str(self.path.parent))

  def write(self, record, step=None):
    """Writes `record`; flat numeric entries also go to TensorBoard."""
    if not self.active:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.summary is not None and step is not None:
      for name, value in _flatten(record):
        self.summary.add_scalar(name, value, step)
      self.summary.flush()

  def close(self):
    if self.summary is not None:
      self.summary.close()


def _flatten(record, prefix=""):
  for key, value in record.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}/")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield f"{prefix}{key}", value


class PhaseTimer:
  """Wall time per phase (features, compile, train, ...), summed over uses."""

  def __init__(self):
    self.start = time.perf_counter()
    self.times = {}
    self.notes = {}  # Phase name -> a word shown beside its time.

  @contextlib.contextmanager
  def phase(self, name):
    """Times the block; yields a callable returning its duration once done."""
    begin = time.perf_counter()
    duration = []
    try:
      yield lambda: duration[0]
    finally:
      duration.append(time.perf_counter() - begin)
      self.times[name] = self.times.get(name, 0.0) + duration[0]

  def totals(self):
    return {**self.times, "total": time.perf_counter() - self.start}

  def summary(self):
    return "  ".join(
        f"{k} {v:.2f}s" + (f" ({self.notes[k]})" if k in self.notes else "")
        for k, v in self.totals().items())
