"""The classifier engine: clip examples, classes, schedule, scores, end to end.

STgram-MFN trains on the same engine as the autoencoders; these tests check
what it adds (tiled clips with their waveforms, classes from names, the
reference's learning-rate schedule, the logprob and nearest-neighbour
scores) against oracles, and one tiny run end to end.
"""

import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import helpers
from aeasd_jax import synth
from aeasd_jax.data import audio
from aeasd_jax.data import cache
from aeasd_jax.data import cache_compute
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.data import features as features_lib
from aeasd_jax.data import labels
from aeasd_jax.data import window_data
from aeasd_jax.evaluation import evaluate
from aeasd_jax.evaluation import recordings
from aeasd_jax.metrics import result_tables
from aeasd_jax.models import registry
from aeasd_jax.scoring import classifier
from aeasd_jax.scoring import neighbours
from aeasd_jax.training import state as state_lib
from aeasd_jax.training import train
from aeasd_jax.workdir import layout

# The tiny dataset's clips are 1 s: 1.0 s examples are 32 frames at hop 512.
CLIP_SECONDS = 1.0


def classifier_config(root, cache_dir):
  """helpers.tiny_config as a tiny STgram-MFN: 16 mels, 1-s clips."""
  config = helpers.tiny_config(root, cache_dir)
  config.model.name = "STgramMFN"
  # The shorter table: fewer layers, a shorter compile.
  config.model.bottlenecks = "liu2022"
  config.model.embedding = 16
  config.data.clip_seconds = CLIP_SECONDS
  config.train.batch_size = 16
  config.train.learning_rate = 1e-3
  config.train.lr_schedule = "cosine"
  config.train.cosine_start_epoch = 1
  config.train.select_by = "last"
  config.score.method = "logprob"
  config.score.batch_clips = 8
  return config


def test_fixed_length_tiles_a_short_clip_and_cuts_a_long_one():
  wave = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(
    cache_compute.fixed_length(wave, 12), np.tile(wave, 3)[:12]
  )
  np.testing.assert_array_equal(cache_compute.fixed_length(wave, 3), wave[:3])


def test_classes_are_type_and_id_in_2020_and_type_and_section_later(
  tiny_root, tmp_path
):
  clips = dcase.discover(tiny_root, (), "dev_data", "eval_data", year=2020)
  training = [i for i, c in enumerate(clips) if c.split == "train"]
  names = labels.class_names(clips, training, "section")
  ids = [f"id_{i:02d}" for i in (*synth.DEV_IDS, *synth.EVAL_IDS)]
  assert names == sorted(f"{t}/{i}" for t in synth.MACHINE_TYPES for i in ids)
  later = synth.generate(
    tmp_path / "data2023", year=2023, clips_per_id=2, seconds=1.0
  )
  clips = dcase.discover(later, (), "dev_data", "eval_data", year=2023)
  training = [i for i, c in enumerate(clips) if c.split == "train"]
  expected = sorted({f"{c.machine_type}/{c.section}" for c in clips})
  assert labels.class_names(clips, training, "section") == expected
  assert all("/section_" in n for n in expected)
  found = labels.clip_labels(clips, expected[1:], "section")
  assert (
    found[[labels.class_of(c, "section") == expected[0] for c in clips]] == -1
  ).all()


def test_cache_of_clip_examples_holds_tiled_waves_and_their_frames(
  tiny_config, tmp_path
):
  clips = dcase.discover(
    tiny_config.data.root, ("fan",), "dev_data", "eval_data", year=2020
  )[:3]
  params = dict(tiny_config.features)
  samples = int(1.5 * tiny_config.features.sample_rate)
  built = cache.build_or_load(
    clips,
    params,
    tmp_path,
    clip_samples=samples,
    keep_waveforms=True,
    show_progress=False,
  )
  log_mel = features_lib.ClipLogMel(params)
  for i, clip in enumerate(built.clips):
    wave = audio.read_audio(clip.path, sample_rate=16000, min_samples=1024)
    tiled = np.concatenate([wave, wave[: samples - len(wave)]])
    np.testing.assert_array_equal(built.waves[i], tiled)
    # Another batch size may sum in another order: float32 rounding of the
    # 1024-term power sums, 1024 * 6e-8 relative, is 3e-4 dB after the log.
    np.testing.assert_allclose(
      built.clip_frames(i), log_mel([tiled])[0], rtol=0, atol=1e-3
    )
  # The autoencoders' caches keep their keys: nothing is added for them.
  plain = cache.build_or_load(clips, params, tmp_path, show_progress=False)
  assert plain.directory.name == cache.cache_key(
    clips, params, {"resample": False, "channel": "mean"}
  )
  assert plain.waves is None


def _torch_cosine_annealing_lrs(base, eta_min, t_max, epochs, start):
  """The rate of each epoch of STgram-MFN's loop, transcribed.

  trainer.py steps the scheduler after every epoch >= start, for epochs
  0..epochs; CosineAnnealingLR.get_lr (torch 2.x) is its recursive form.
  """
  lrs, lr, last_epoch = [], base, 0
  for epoch in range(epochs):
    lrs.append(lr)
    if epoch >= start:
      last_epoch += 1
      if (last_epoch - 1 - t_max) % (2 * t_max) == 0:
        lr = lr + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
      else:
        lr = (1 + math.cos(math.pi * last_epoch / t_max)) / (
          1 + math.cos(math.pi * (last_epoch - 1) / t_max)
        ) * (lr - eta_min) + eta_min
  return np.asarray(lrs)


def test_rate_schedule_steps_as_the_reference_steps_it(tiny_root, tmp_path):
  config = classifier_config(tiny_root, tmp_path)
  config.train.epochs, config.train.cosine_start_epoch = 300, 20
  config.train.cosine_final, config.train.learning_rate = 0.1, 1e-4
  factor = state_lib._rate_factor(config.train)  # pylint: disable=protected-access
  ours = 1e-4 * np.asarray([factor(e) for e in range(300)], np.float64)
  expected = _torch_cosine_annealing_lrs(1e-4, 1e-5, 300, 300, 20)
  # float32 cosines: a few ulps of the factor.
  np.testing.assert_allclose(ours, expected, rtol=1e-6)
  torch = pytest.importorskip("torch")
  w = torch.nn.Parameter(torch.zeros(1))
  optimizer = torch.optim.Adam([w], lr=1e-4)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
    optimizer, T_max=300, eta_min=1e-5
  )
  lrs = []
  for epoch in range(300):
    lrs.append(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if epoch >= 20:
      scheduler.step()
  np.testing.assert_allclose(ours, lrs, rtol=1e-6)


def test_knn_score_is_the_cosine_distance_to_the_nearest_of_its_class():
  sklearn_neighbors = pytest.importorskip("sklearn.neighbors")
  rng = np.random.default_rng(0)
  reference = rng.standard_normal((40, 8))
  reference_labels = rng.integers(0, 3, 40)
  scored = rng.standard_normal((10, 8))
  scored_labels = rng.integers(0, 3, 10)
  ours = neighbours.knn_scores(
    scored, scored_labels, reference, reference_labels
  )
  for i in range(10):
    same = reference[reference_labels == scored_labels[i]]
    nn = sklearn_neighbors.NearestNeighbors(n_neighbors=1, metric="cosine")
    distance, _ = nn.fit(same).kneighbors(scored[i : i + 1])
    np.testing.assert_allclose(ours[i], distance[0, 0], rtol=1e-12, atol=1e-12)


def test_logprob_score_is_minus_log_softmax_of_the_own_class():
  rng = np.random.default_rng(0)
  # ArcFace logits lie in [-s, s], s = 30.
  logits = rng.uniform(-30, 30, (6, 5)).astype(np.float32)
  label = rng.integers(0, 5, 6)
  expected = -scipy.special.log_softmax(logits.astype(np.float64), 1)[
    np.arange(6), label
  ]
  # float32 log-sum-exp of values up to 30: a few ulps of 30 (2e-6 each).
  np.testing.assert_allclose(
    classifier.own_class_nll(jnp.asarray(logits), jnp.asarray(label)),
    expected,
    rtol=0,
    atol=2e-5,
  )


@pytest.mark.parametrize("streamed", [False, True])
def test_clip_examples_carry_their_own_class_and_waveform(
  tiny_root, tmp_path, streamed
):
  config = classifier_config(tiny_root, tmp_path)
  features, groups = dataset.load(config, waveforms=True, show_progress=False)
  group = train.training_groups(config, groups)[0]
  names = train.class_names(config, features, groups)
  clip_labels = labels.clip_labels(features.clips, names, "section")
  frames = registry.example_frames(config)
  examples = dict(labels=clip_labels, waveforms=True)
  if streamed:
    chunks = list(
      window_data.stream_chunks(
        features, [group], frames, 16, epoch=0, seed=0, **examples
      )
    )
  else:
    chunks = [
      window_data.gather_host_windows(features, [group], frames, **examples)
    ]
  seen = []
  for chunk in chunks:
    rows, waves = np.asarray(chunk.frames), np.asarray(chunk.waves)
    for start in chunk.train_starts[0, : chunk.train_counts[0]]:
      clip = start // frames
      # The clip whose frames these are, by content.
      (c,) = [
        c
        for c in group.train_clips
        if np.array_equal(features.clip_frames(c), rows[start : start + frames])
      ]
      assert chunk.labels[clip] == clip_labels[c]
      np.testing.assert_array_equal(waves[clip], features.waves[c])
      seen.append(c)
  assert sorted(seen) == sorted(group.train_clips)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny STgram-MFN trained 2 epochs, 2 seeds; and one resumed at 1."""
  root = tmp_path_factory.mktemp("classifier")
  data = synth.generate(root / "data", seed=0, clips_per_id=4, seconds=1.0)
  config = classifier_config(data, root / "cache")
  # The three runs compile the same programs: the second and third read
  # them from JAX's persistent cache.
  config.compile_cache_dir = str(root / "jax_cache")
  config.train.num_seeds = 2
  train.train_and_evaluate(config, root / "straight")
  config.train.epochs = 1
  train.train_and_evaluate(config, root / "resumed")
  config.train.epochs = 2
  train.train_and_evaluate(config, root / "resumed")
  return root, config


def test_classifier_resumed_run_equals_uninterrupted_run(trained):
  root, _ = trained
  # Bit for bit: the same compiled program on the same device.
  chex.assert_trees_all_equal(
    helpers.latest_weights(root / "straight"),
    helpers.latest_weights(root / "resumed"),
  )


def test_one_classifier_serves_every_type_with_its_classes(trained):
  root, config = trained
  workdir = layout.Workdir(root / "straight")
  assert workdir.read_groups() == sorted(synth.MACHINE_TYPES)
  ids = (*synth.DEV_IDS, *synth.EVAL_IDS)
  assert workdir.read_classes() == sorted(
    f"{t}/id_{i:02d}" for t in synth.MACHINE_TYPES for i in ids
  )
  params, _ = helpers.latest_weights(root / "straight")
  # One model per seed, whatever the types.
  assert {x.shape[0] for x in jax.tree.leaves(params)} == {
    config.train.num_seeds
  }


@pytest.mark.parametrize("method", ["logprob", "knn"])
def test_classifier_evaluates_into_the_dcase_files(trained, method):
  root, _ = trained
  report = evaluate.evaluate(root / "straight", score_method=method)
  results = root / "straight" / "results" / method
  for machine_type in synth.MACHINE_TYPES:
    for i in synth.DEV_IDS:
      assert (
        results / f"anomaly_score_{machine_type}_id_{i:02d}.csv"
      ).is_file()
  overall = result_tables.type_means(2020, report["dev"])[1]
  assert 0.0 <= overall["auc"] <= 1.0 and 0.0 <= overall["pauc"] <= 1.0


def test_classifier_scores_a_recording_by_its_class(trained, capsys):
  root, config = trained
  clip = sorted(
    (pathlib.Path(config.data.root) / "dev_data" / "fan" / "test").iterdir()
  )[0]
  rows = recordings.score_recordings(
    root / "straight", clip, machine_type="fan"
  )
  assert rows[0]["segments"] == [] and np.isfinite(rows[0]["score"])
  # The same score as the evaluation's of that clip (seed mean).
  evaluate.evaluate(root / "straight", score_method="logprob")
  evaluated = dict(
    _score_csv(root / "straight" / "results" / "logprob", "fan", clip.name)
  )
  np.testing.assert_allclose(rows[0]["score"], evaluated[clip.name], rtol=1e-5)
  capsys.readouterr()


def _score_csv(folder, machine_type, name):
  section = dcase.section_in_name(name)
  path = folder / f"anomaly_score_{machine_type}_{section}.csv"
  for line in path.read_text().splitlines():
    file, score = line.split(",")
    yield file, float(score)
