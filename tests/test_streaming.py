"""Streaming the training frames in chunks, for data larger than a device."""

import numpy as np
import pytest

import helpers
from aeasd_jax.data import dataset
from aeasd_jax.workdir import metric_log
from aeasd_jax.training import train
from aeasd_jax.data import window_data
from aeasd_jax.workdir import layout


def _curve(workdir, key):
  records = metric_log.read_records(layout.Workdir(workdir).metrics_file)
  return np.asarray([list(r[key].values()) for r in records if "epoch" in r])


@pytest.fixture(scope="module")
def curves(tmp_path_factory, tiny_root, session_cache_dir):
  config = helpers.tiny_config(tiny_root, session_cache_dir)
  config.train.epochs = 6
  config.train.learning_rate = 3e-3  # Visible progress in 6 short epochs.
  config.train.batch_size = 32
  config.score.batch_windows = 256
  base = tmp_path_factory.mktemp("stream")
  runs = {}
  for name, resident in (("resident", True), ("streamed", False)):
    config.data.device_resident = resident
    # 18 training clips per group in 2 chunks of 9.
    config.data.stream_chunk_clips = 9
    train.train_and_evaluate(config, base / name)
    runs[name] = {k: _curve(base / name, k) for k in ("train_loss", "val_loss")}
  return runs


@pytest.mark.numerics
def test_streamed_loss_curve_follows_the_resident_one(curves):
  resident = curves["resident"]["train_loss"]
  streamed = curves["streamed"]["train_loss"]
  assert resident.shape == streamed.shape == (6, 3)
  # Both learn: the loss falls by a fifth or more.
  assert np.all(streamed[-1] < 0.8 * streamed[0])
  assert np.all(resident[-1] < 0.8 * resident[0])
  # Not a rounding equivalence, so the tolerance bounds a designed
  # difference. The streamed run sees the same windows in another batch
  # order, less each chunk's remainder: 14 steps of 32 an epoch instead of 15.
  # By epoch 6 it has trained 6/15 of an epoch less; with the loss falling by
  # at most a sixth an epoch here, that is <= 6.7%. Another batch order moves
  # an epoch's mean loss by about the spread of its squared errors (about
  # their mean) over sqrt(448 windows): <= 5%. 15% covers the sum, 12%. Float32
  # rounding on another CPU moves these losses by ~1e-7 relative. (The
  # validation loss of so tiny a model swings by more than that between
  # epochs, so it is not compared.)
  np.testing.assert_allclose(streamed, resident, rtol=0.15)


def test_chunks_cover_every_training_clip_once_per_epoch(tiny_config):
  features, groups = dataset.load(tiny_config, show_progress=False)
  per_epoch = []
  for epoch in range(2):
    chunks = list(
      window_data.stream_chunks(features, groups, 5, 4, epoch, seed=0)
    )
    assert len({tuple(map(np.shape, c)) for c in chunks}) == 1  # One program.
    counts = np.sum([c.train_counts for c in chunks], axis=0)
    expected = [
      window_data.window_count(features, g.train_clips, 5) for g in groups
    ]
    np.testing.assert_array_equal(counts, expected)
    per_epoch.append(np.concatenate([c.frames[:8].ravel() for c in chunks]))
  # A fresh clip order every epoch.
  assert not np.array_equal(per_epoch[0], per_epoch[1])


def test_clip_frames_reads_the_rows_asked_for(tiny_config):
  features, groups = dataset.load(tiny_config, show_progress=False)
  clips = list(groups[0].train_clips[:5])
  laid_out = np.concatenate([features.clip_frames(c) for c in clips])
  frames = window_data.ClipFrames(features, clips, len(laid_out) + 10)
  assert frames.shape == (len(laid_out) + 10, features.frames.shape[1])
  for start, stop in (
    (0, 5),
    (3, 40),
    (31, 32),
    (0, len(laid_out)),
    (len(laid_out) - 3, len(laid_out) + 10),
  ):
    expected = np.zeros((stop - start, laid_out.shape[1]), np.float32)
    have = laid_out[start:stop]
    expected[: len(have)] = have  # Rows past the clips read as zeros.
    np.testing.assert_array_equal(frames[start:stop], expected)


class _FakeDevice:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


@pytest.mark.parametrize(
  "stats,forced,expected",
  [
    (None, None, True),  # No memory figures (the CPU): resident.
    ({"bytes_limit": 10**12, "bytes_in_use": 0}, None, True),
    ({"bytes_limit": 10**5, "bytes_in_use": 0}, None, False),
    ({"bytes_limit": 10**5, "bytes_in_use": 0}, True, True),
    ({"bytes_limit": 10**12, "bytes_in_use": 0}, False, False),
  ],
)
def test_resident_or_streamed_is_chosen_by_free_device_memory(
  tiny_config, monkeypatch, caplog, stats, forced, expected
):
  features, groups = dataset.load(tiny_config, show_progress=False)
  tiny_config.data.device_resident = forced
  monkeypatch.setattr(train.jax, "local_devices", lambda: [_FakeDevice(stats)])
  with caplog.at_level("INFO", logger="aeasd_jax"):
    assert (
      train._device_resident(  # pylint: disable=protected-access
        tiny_config, features, groups
      )
      == expected
    )
  if stats and forced is None:
    assert (
      "keeping them on the device" if expected else "streaming them"
    ) in caplog.text
