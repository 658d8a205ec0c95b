"""`python -m aeasd_jax.download` against a local HTTP server.

The server (127.0.0.1, a port the OS picks) serves zips made here in the
DCASE 2023 layout, and can answer 404, break a download off, or ignore
Range requests. The command runs in-process through its run() function with
a test table of archives; no test reaches the internet.
"""

import collections
import hashlib
import http.server
import io
import re
import socket
import threading
import zipfile

import pytest

from aeasd_jax.data import dcase
from aeasd_jax.download import __main__ as cli
from aeasd_jax.download import archives
from aeasd_jax.download import fetch
from aeasd_jax.download import prepare

# A tiny DCASE 2023 year: a dev type, and an eval type whose additional
# training set and evaluation set come in two archives.
MEMBERS = {
  "dev_fan.zip": [
    "fan/train/section_00_source_train_normal_0000_vel_6.wav",
    "fan/train/section_00_target_train_normal_0000_vel_9.wav",
    "fan/test/section_00_source_test_normal_0000_vel_6.wav",
    "fan/test/section_00_source_test_anomaly_0000_vel_6.wav",
  ],
  "eval_data_bandsaw_train.zip": [
    "bandsaw/train/section_00_source_train_normal_0000_vel_1.wav",
  ],
  "eval_data_bandsaw_test.zip": [
    "bandsaw/test/section_00_0000.wav",
    "bandsaw/test/section_00_0001.wav",
  ],
}
# Enough bytes per member that a download can break off in its middle.
PAYLOAD = bytes(range(256)) * 64


def _zip(names, payload=PAYLOAD):
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
    for name in names:
      zipped.writestr(name, payload)
  return buffer.getvalue()


def _md5(data):
  return hashlib.md5(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves server.files; server.mode picks how it misbehaves."""

  def log_message(self, *args):
    del args

  def do_HEAD(self):
    self._answer(send_body=False)

  def do_GET(self):
    self._answer(send_body=True)

  def _answer(self, send_body):
    server = self.server
    wanted = self.headers.get("Range")
    server.requests.append((self.command, self.path, wanted))
    data = server.files.get(self.path.rsplit("/", 1)[-1])
    if data is None or server.mode == "missing":
      self.send_error(404)
      return
    start = 0
    if wanted and server.mode != "ignore_range":
      start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
      self.send_response(206)
      self.send_header(
        "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
      )
    else:
      self.send_response(200)
    self.send_header("Content-Length", str(len(data) - start))
    self.end_headers()
    if not send_body:
      return
    if server.mode == "drop":
      self.wfile.write(data[start : start + server.drop_after])
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_RDWR)
      return
    self.wfile.write(data[start:])


class _Server(http.server.ThreadingHTTPServer):
  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.files = {}
    self.mode = "ok"
    self.drop_after = 0
    self.requests = []

  def handle_error(self, request, client_address):
    del request, client_address  # A connection the "drop" mode broke.

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}/mirror"


@pytest.fixture
def server():
  httpd = _Server()
  thread = threading.Thread(
    target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
  )
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  thread.join(timeout=10)


def _archive(part, machine_type, name, data, *, md5=True):
  return archives.Archive(
    2023,
    part,
    machine_type,
    f"https://zenodo.invalid/records/1/files/{name}",
    _md5(data) if md5 else None,
  )


@pytest.fixture
def year(server, monkeypatch):
  """DCASE 2023 as the test table has it, served by `server`."""
  server.files = {name: _zip(members) for name, members in MEMBERS.items()}
  table = (
    _archive("dev", "fan", "dev_fan.zip", server.files["dev_fan.zip"]),
    *(
      _archive(part, "bandsaw", name, server.files[name])
      for part, name in (
        ("additional", "eval_data_bandsaw_train.zip"),
        ("eval", "eval_data_bandsaw_test.zip"),
      )
    ),
  )
  monkeypatch.setattr(archives, "TABLE", {2023: table})
  # A test that hangs fails within seconds instead.
  monkeypatch.setattr(fetch, "TIMEOUT_S", 10)
  return server


def _run(capsys, *argv, environ=None):
  code = cli.run(["download", *argv], environ=environ or {})
  out, err = capsys.readouterr()
  return code, out, err


def _error_line(code, err):
  """The one `error:` line of a failed run (and no traceback)."""
  assert code == 2
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in err, err
  return errors[0]


def _clips(root):
  """(subset, split, type, name) of every clip the training code finds."""
  return sorted(
    (c.subset, c.split, c.machine_type, c.name)
    for c in dcase.discover(root, year=2023)
  )


EXPECTED_CLIPS = sorted(
  (
    "dev" if name.startswith("dev") else "eval",
    member.split("/")[1],
    member.split("/")[0],
    member.split("/")[2],
  )
  for name, members in MEMBERS.items()
  for member in members
)


def _get_requests(server):
  return [r for r in server.requests if r[0] == "GET"]


def test_a_year_unpacks_into_the_layout_training_reads(year, tmp_path, capsys):
  root = tmp_path / "dcase2023"
  code, out, err = _run(
    capsys,
    "--year=2023",
    f"--root={root}",
    environ={prepare.MIRROR_ENV: year.url},
  )
  assert code == 0, err
  assert out.strip() == str(root)
  assert _clips(root) == EXPECTED_CLIPS
  # The official baseline's raw/ folders, and nothing left in flight.
  assert sorted(p.name for p in (root / "eval_data" / "raw").iterdir()) == [
    "bandsaw"
  ]
  state = root / prepare.STATE_FOLDER / "dcase2023"
  assert sorted(p.name for p in state.iterdir()) == sorted(
    f"{name}.done" for name in MEMBERS
  )
  assert {path for _, path, _ in year.requests} == {
    f"/mirror/{name}" for name in MEMBERS
  }


def test_a_rerun_downloads_nothing(year, tmp_path, capsys):
  flags = ("--year=2023", f"--root={tmp_path / 'data'}", f"--mirror={year.url}")
  assert _run(capsys, *flags)[0] == 0
  year.requests.clear()
  code, _, err = _run(capsys, *flags)
  assert code == 0, err
  assert year.requests == []
  assert "already" in err


def test_an_interrupted_download_resumes_with_a_range(year, tmp_path, capsys):
  root = tmp_path / "data"
  flags = (
    "--year=2023",
    f"--root={root}",
    f"--mirror={year.url}",
    "--parts=dev",
  )
  year.mode, year.drop_after = "drop", 5000
  line = _error_line(*_run(capsys, *flags)[::2])
  assert "broke off" in line and "resume" in line
  partial = root / prepare.STATE_FOLDER / "dcase2023" / "dev_fan.zip.partial"
  assert partial.stat().st_size == year.drop_after
  assert not (root / "dev_data").exists()

  year.mode = "ok"
  year.requests.clear()
  code, _, err = _run(capsys, *flags)
  assert code == 0, err
  assert _get_requests(year) == [
    ("GET", "/mirror/dev_fan.zip", f"bytes={year.drop_after}-")
  ]
  # The md5 check passed on the joined file, and training finds the clips.
  assert _clips(root) == [c for c in EXPECTED_CLIPS if c[0] == "dev"]


def test_a_server_that_ignores_range_restarts_from_zero(year, tmp_path, capsys):
  root = tmp_path / "data"
  partial = root / prepare.STATE_FOLDER / "dcase2023" / "dev_fan.zip.partial"
  partial.parent.mkdir(parents=True)
  partial.write_bytes(b"not the start of the archive")
  year.mode = "ignore_range"
  code, _, err = _run(
    capsys,
    "--year=2023",
    f"--root={root}",
    f"--mirror={year.url}",
    "--parts=dev",
  )
  # Appending the whole file to the stale bytes would fail the md5 check.
  assert code == 0, err
  assert (
    _get_requests(year)[0][2]
    == f"bytes={len(b'not the start of the archive')}-"
  )
  assert _clips(root) == [c for c in EXPECTED_CLIPS if c[0] == "dev"]


def test_a_corrupted_archive_is_refused(year, tmp_path, capsys):
  root = tmp_path / "data"
  good = year.files["dev_fan.zip"]
  bad = good[:100] + bytes([good[100] ^ 1]) + good[101:]
  year.files["dev_fan.zip"] = bad
  line = _error_line(
    *_run(capsys, "--year=2023", f"--root={root}", f"--mirror={year.url}")[::2]
  )
  assert "dev_fan.zip" in line
  assert _md5(good) in line and _md5(bad) in line
  state = root / prepare.STATE_FOLDER / "dcase2023"
  assert list(state.iterdir()) == []
  assert not (root / "dev_data").exists()
  assert not (root / "eval_data").exists()


@pytest.mark.parametrize(
  "mode,expected", [("missing", "HTTP 404"), ("drop", "broke off")]
)
def test_a_failed_download_is_one_error_line(
  year, tmp_path, capsys, mode, expected
):
  year.mode = mode
  line = _error_line(
    *_run(capsys, "--year=2023", f"--root={tmp_path}", f"--mirror={year.url}")[
      ::2
    ]
  )
  assert expected in line and year.url in line


@pytest.mark.parametrize("member", ["fan/../../evil.wav", "{tmp}/evil.wav"])
def test_a_member_outside_the_archive_folder_is_refused(
  year, tmp_path, capsys, monkeypatch, member
):
  member = member.format(tmp=tmp_path)
  data = _zip([*MEMBERS["dev_fan.zip"], member])
  year.files["dev_fan.zip"] = data
  monkeypatch.setattr(
    archives, "TABLE", {2023: (_archive("dev", "fan", "dev_fan.zip", data),)}
  )
  root = tmp_path / "data"
  line = _error_line(
    *_run(capsys, "--year=2023", f"--root={root}", f"--mirror={year.url}")[::2]
  )
  assert "outside" in line and "evil.wav" in line
  assert list(tmp_path.rglob("evil.wav")) == []
  assert not (root / "dev_data").exists()


def test_a_damaged_zip_without_a_checksum_is_removed(
  year, tmp_path, capsys, monkeypatch
):
  data = year.files["dev_fan.zip"]
  # A flipped byte inside a stored member fails its CRC-32.
  at = data.find(PAYLOAD) + 10
  data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
  year.files["dev_fan.zip"] = data
  monkeypatch.setattr(
    archives,
    "TABLE",
    {2023: (_archive("dev", "fan", "dev_fan.zip", data, md5=False),)},
  )
  root = tmp_path / "data"
  line = _error_line(
    *_run(capsys, "--year=2023", f"--root={root}", f"--mirror={year.url}")[::2]
  )
  assert "dev_fan.zip" in line and "removed" in line
  assert list((root / prepare.STATE_FOLDER / "dcase2023").iterdir()) == []
  assert not (root / "dev_data").exists()


def test_unpacking_again_replaces_the_earlier_folders_whole(
  year, tmp_path, capsys
):
  root = tmp_path / "data"
  flags = ("--year=2023", f"--root={root}", f"--mirror={year.url}")
  assert _run(capsys, *flags)[0] == 0
  # As if a run had moved the folders in and stopped before its markers.
  for marker in (root / prepare.STATE_FOLDER).rglob("*.done"):
    marker.unlink()
  stale = root / "dev_data" / "raw" / "fan" / "train" / "stale.wav"
  stale.write_bytes(b"")
  code, _, err = _run(capsys, *flags)
  assert code == 0, err
  assert not stale.exists()
  assert _clips(root) == EXPECTED_CLIPS


def test_too_little_disk_is_refused_before_downloading(
  year, tmp_path, capsys, monkeypatch
):
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(
    prepare.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 10, 10)
  )
  line = _error_line(
    *_run(capsys, "--year=2023", f"--root={tmp_path}", f"--mirror={year.url}")[
      ::2
    ]
  )
  assert "10 B free" in line and "1.1 times" in line
  assert _get_requests(year) == []


def test_a_root_of_another_year_is_refused(year, tmp_path, capsys):
  (tmp_path / prepare.STATE_FOLDER / "dcase2022").mkdir(parents=True)
  line = _error_line(
    *_run(capsys, "--year=2023", f"--root={tmp_path}", f"--mirror={year.url}")[
      ::2
    ]
  )
  assert "dcase2022" in line
  assert year.requests == []


@pytest.mark.parametrize(
  "argv,expected",
  [
    (["--year=2026", "--root=r"], "--year=2026"),
    (["--year=2019", "--root=r"], "--year=2019"),
    (["--year=2023"], "--root"),
    (["--year=2023", "--root=r", "--parts=test"], "--parts=test"),
    (["--year=2023", "--root=r", "--machine_types=drill"], "drill"),
    (["--year=2023", "--root=r", "--mirror=ftp://x"], "ftp://x"),
    (["--year=2023", "--root=r", "--nope"], "nope"),
    (["--year=2023", "--root=r", "stray"], "stray"),
  ],
)
def test_bad_input_is_one_error_line(
  year, tmp_path, capsys, monkeypatch, argv, expected
):
  monkeypatch.chdir(tmp_path)
  assert expected in _error_line(*_run(capsys, *argv)[::2])
  assert year.requests == []


def test_the_table_lists_every_published_year():
  assert set(archives.TABLE) | set(archives.UNPUBLISHED) == set(dcase.YEARS)
  assert set(archives.UNPUBLISHED) == {2026}
  assert set(archives.TABLE) == set(range(2020, 2026))
  for year, entries in archives.TABLE.items():
    assert {a.part for a in entries} == set(archives.PARTS), year
    names = [a.file_name for a in entries]
    # A mirror holds a year's files side by side, by name.
    assert len(set(names)) == len(names), year
    md5s = [a.md5 for a in entries]
    # A year's md5s come from one source, all or none.
    assert all(md5s) or not any(md5s), year
    for a in entries:
      assert a.year == year
      assert re.fullmatch(
        r"https://zenodo\.org/records?/\d+/files/\S+\.zip", a.url
      )
      assert a.url.endswith("/" + a.file_name) and a.machine_type in a.file_name
      assert a.md5 is None or re.fullmatch(r"[0-9a-f]{32}", a.md5), a
      assert a.size is None or a.size > 0, a
      raw = "/raw" if year >= 2022 else ""
      subset = "dev_data" if a.part == "dev" else "eval_data"
      assert a.folder == subset + raw
  all_md5s = [a.md5 for e in archives.TABLE.values() for a in e if a.md5]
  assert len(set(all_md5s)) == len(all_md5s) == 18 + 21


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize(
  "stream_type,interval", [(io.StringIO, 10.0), (_Terminal, 0.25)]
)
def test_progress_shows_bytes_rate_and_time_left(stream_type, interval):
  clock, stream = _Clock(), stream_type()
  progress = fetch.Progress("a.zip", 0, 4000, stream, clock=clock)
  progress.update(1000)  # The first update shows a line.
  clock.now = interval / 2
  progress.update(1000)  # Too soon for another.
  clock.now = interval * 2
  progress.update(1000)
  shown = stream.getvalue()
  assert shown.count("a.zip") == 2
  rate = 3000 / (interval * 2)
  assert f"3.0 kB of 4.0 kB, {fetch.human_size(rate)}/s" in shown
  assert f"{int(1000 / rate)}s left" in shown
  assert shown.startswith("\r") == (stream_type is _Terminal)
