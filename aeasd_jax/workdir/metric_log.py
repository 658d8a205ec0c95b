"""Per-epoch metrics: metrics.jsonl in the workdir, TensorBoard when asked.

Only process 0 writes, so multi-process runs log once. Each record is one
line written by one call, so a run cut short leaves at most its last line
torn; readers skip that line and the next writer removes it.
"""

import contextlib
import json
import logging
import os
import pathlib
import time

import jax

from aeasd_jax.workdir import file_io
from aeasd_jax.errors import AeasdError

log = logging.getLogger(__name__)


class MetricWriter:
  """Appends one JSON object per record; mirrors scalars to TensorBoard."""

  def __init__(self, path, tensorboard=False):
    self.active = jax.process_index() == 0
    self.path = pathlib.Path(path)
    self.summary = None
    if not self.active:
      return
    self._repair()
    if tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise AeasdError(
          "config.train.tensorboard=True needs the tensorboard extra:"
          " pip install -e .[tensorboard]"
        ) from None
      self.summary = tensorboardX.SummaryWriter(str(self.path.parent))

  def _repair(self):
    """Cuts a torn last line, which would otherwise join the next record."""
    data = _read(self.path)
    if data is None:
      return
    _, intact = _parse(self.path, data)
    try:
      if intact < len(data):
        log.warning(
          "%s: removing its last line, which an interrupted write"
          " left unfinished",
          self.path,
        )
        os.truncate(self.path, intact)
      elif data and not data.endswith(b"\n"):
        with open(self.path, "ab") as f:
          f.write(b"\n")
    except OSError as e:
      raise file_io.write_error(self.path, e) from None

  def write(self, record, step=None):
    """Writes `record`; flat numeric entries also go to TensorBoard.

    Non-finite floats are written as null, keeping each line strict JSON.
    """
    if not self.active:
      return
    line = (file_io.dumps_json(record) + "\n").encode()
    size = None
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
      try:
        size = os.fstat(fd).st_size
        while line:  # os.write may write less than asked, e.g. on a full disk.
          line = line[os.write(fd, line) :]
      finally:
        os.close(fd)
    except OSError as e:
      if size is not None:
        with contextlib.suppress(OSError):
          os.truncate(self.path, size)
      raise file_io.write_error(self.path, e) from None
    if self.summary is not None and step is not None:
      for name, value in _flatten(record):
        self.summary.add_scalar(name, value, step)
      self.summary.flush()

  def close(self):
    if self.summary is not None:
      self.summary.close()


def read_records(path):
  """The records of a metrics log (a workdir's metrics.jsonl), in order.

  A last line that does not parse, which an interrupted write leaves, is
  skipped with a warning.

  Raises:
    AeasdError: the file is missing, or damaged before its last line.
  """
  path = pathlib.Path(path)
  data = _read(path)
  if data is None:
    raise file_io.missing_error(path)
  lines, intact = _parse(path, data)
  if intact < len(data):
    log.warning(
      "%s: skipping its last line, which an interrupted write left unfinished",
      path,
    )
  return [record for _, record in lines]


def drop_epochs_after(path, epoch):
  """Removes the records of epochs after `epoch` from the metrics log.

  A resumed run logs those epochs again; their old records belong to
  weights the resumption discards. Other records keep their order.

  Args:
    path: the metrics log.
    epoch: the checkpoint the run resumes from; None (no checkpoint) drops
      every epoch record.
  """
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  data = _read(path)
  if data is None:
    return
  lines, intact = _parse(path, data)
  kept = [
    line
    for line, record in lines
    if "epoch" not in record or (epoch is not None and record["epoch"] <= epoch)
  ]
  if len(kept) == len(lines) and intact == len(data):
    return
  log.info(
    "%s: dropping %d record(s) of epochs after %s, which this run logs again",
    path,
    len(lines) - len(kept),
    "the start" if epoch is None else epoch,
  )
  try:
    with file_io.atomic_open(path, "wb") as f:
      f.writelines(line.rstrip(b"\n") + b"\n" for line in kept)
  except OSError as e:
    raise file_io.write_error(path, e) from None


def _read(path):
  return file_io.read_bytes(path, "expected a readable metrics log")


def _parse(path, data):
  """([(line, record)], length of the intact part) of a metrics log.

  Raises:
    AeasdError: a line before the last one does not parse; no interrupted
      write leaves that.
  """
  lines = data.splitlines(keepends=True)
  parsed, intact = [], 0
  for number, line in enumerate(lines, 1):
    if line.strip():
      try:
        record = json.loads(line)
      except ValueError as e:  # Also a UnicodeDecodeError.
        if number == len(lines):
          break
        raise AeasdError(
          f"{path}: line {number} is damaged ({e}); expected one JSON"
          " object per line. Delete that line to keep the others"
        ) from None
      if not isinstance(record, dict):
        raise AeasdError(
          f"{path}: line {number} is damaged (not a JSON"
          " object); expected one JSON object per line."
          " Delete that line to keep the others"
        )
      parsed.append((line, record))
    intact += len(line)
  return parsed, intact


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
      for k, v in self.totals().items()
    )
