"""Resumable HTTP downloads with urllib, and their progress on stderr.

A download writes `<name>.partial`; a rerun asks for the rest with a Range
request and starts over when the server answers with the whole file.
"""

import hashlib
import http.client
import sys
import time
import urllib.error
import urllib.request

from aeasd_jax.errors import AeasdError

# Seconds a connect or a read may wait before the download counts as broken.
TIMEOUT_S = 60
_CHUNK = 1 << 20
_EARLY = "the server closed it early"


def remote_size(url):
  """The byte size the server announces for `url`, or None if it does not."""
  request = urllib.request.Request(url, method="HEAD")
  with _opened(request, url, 0) as response:
    length = response.headers.get("Content-Length")
  return int(length) if length is not None else None


def fetch(url, partial, *, stream=None):
  """Downloads `url` into the file `partial`, resuming what it holds.

  The progress goes to `stream`, sys.stderr if None.

  Raises:
    AeasdError: the server refused, or the connection broke off (what came
      stays in `partial` for the next run to resume).
  """
  start = partial.stat().st_size if partial.exists() else 0
  headers = {"Range": f"bytes={start}-"} if start else {}
  request = urllib.request.Request(url, headers=headers)
  try:
    response = _opened(request, url, start)
  except _RangeBeyondEnd:
    return  # `partial` already holds the whole file; the checks will tell.
  with response:
    if start and response.status != 206:
      start = 0  # The server ignored the Range and sends the whole file.
    elif start:
      _check_range(url, response, start)
    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    name = partial.name.removesuffix(".partial")
    progress = Progress(name, start, total, stream or sys.stderr)
    with open(partial, "ab" if start else "wb") as out:
      _copy(response, out, progress, url, partial)
  progress.finish()
  if total is not None and progress.done != total:
    raise _broke_off(url, partial, progress, _EARLY)


def md5_of(path):
  digest = hashlib.md5()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


class _RangeBeyondEnd(Exception):
  """HTTP 416 to a Range request: nothing is left to download."""


def _opened(request, url, start):
  try:
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and start:
      raise _RangeBeyondEnd() from None
    raise AeasdError(
      f"{url}: the server answered HTTP {e.code} {e.reason}; expected the"
      " archive (a --mirror must hold the year's files under their names)"
    ) from None
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    reason = getattr(e, "reason", None) or e
    raise AeasdError(f"{url}: cannot reach the server ({reason})") from None


def _check_range(url, response, start):
  answered = response.headers.get("Content-Range", "")
  if not answered.startswith(f"bytes {start}-"):
    raise AeasdError(
      f"{url}: asked for the bytes from {start} on, the server sent"
      f" {answered or 'no Content-Range'}; expected bytes {start}-..."
    )


def _copy(response, out, progress, url, partial):
  while True:
    try:
      chunk = response.read(_CHUNK)
    except (OSError, http.client.HTTPException) as e:
      out.flush()
      progress.finish()
      why = _EARLY if isinstance(e, http.client.IncompleteRead) else e
      raise _broke_off(url, partial, progress, why) from None
    if not chunk:
      return
    out.write(chunk)
    progress.update(len(chunk))


def _broke_off(url, partial, progress, why):
  of = f" of {human_size(progress.total)}" if progress.total else ""
  return AeasdError(
    f"{url}: the connection broke off after {human_size(progress.done)}"
    f"{of} ({why}); rerun the same command to resume from {partial}"
  )


class Progress:
  """Bytes, rate and time left of one download, shown on `stream`.

  On a terminal one line is rewritten up to 4 times a second; elsewhere (a
  log file) a plain line is written every 10 seconds at most.
  """

  def __init__(self, name, done, total, stream, clock=time.monotonic):
    self.done = done
    self.total = total
    self._name = name
    self._stream = stream
    self._tty = stream.isatty()
    self._interval = 0.25 if self._tty else 10.0
    self._clock = clock
    self._start = (clock(), done)
    self._shown = None  # When the last line was written.
    self._shown_done = None  # The bytes it showed.

  def update(self, received):
    self.done += received
    now = self._clock()
    if self._shown is None or now - self._shown >= self._interval:
      self._show(now)

  def finish(self):
    if self._shown_done != self.done:
      self._show(self._clock())
    if self._tty:
      self._stream.write("\n")
    self._stream.flush()

  def _show(self, now):
    self._shown, self._shown_done = now, self.done
    seconds, start = now - self._start[0], self._start[1]
    rate = (self.done - start) / seconds if seconds > 0 else 0.0
    line = f"{self._name}: {human_size(self.done)}"
    if self.total:
      line += f" of {human_size(self.total)}"
    line += f", {human_size(rate)}/s"
    if self.total and self.done < self.total and rate > 0:
      line += f", {_duration((self.total - self.done) / rate)} left"
    if self._tty:
      self._stream.write(f"\r{line}\033[K")
    else:
      self._stream.write(line + "\n")
    self._stream.flush()


def human_size(n):
  """`n` bytes in decimal units, as download sites show sizes: 1.2 GB."""
  for unit in ("B", "kB", "MB", "GB"):
    if abs(n) < 1000:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def _duration(seconds):
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"
