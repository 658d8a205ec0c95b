"""Evaluation: scoring equivalences, DCASE file formats, thresholds, --wav."""

import csv
import importlib.util
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as sk_metrics

import helpers
from aeasd_jax.data import dataset
from aeasd_jax.evaluation import evaluate
from aeasd_jax.scoring import group_scoring
from aeasd_jax.workdir import metric_log
from aeasd_jax.evaluation import recordings
from aeasd_jax.evaluation import results
from aeasd_jax.training import run_identity
from aeasd_jax.scoring import reconstruction
from aeasd_jax.training import train
from aeasd_jax.data import window_data
from aeasd_jax.training import restore
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout

GROUND_TRUTH = (
  pathlib.Path(__file__).parents[2]
  / "shared"
  / "reference"
  / "eval_data_list.csv"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_root, session_cache_dir):
  """A tiny IDNN run with 2 seeds, evaluated once for the module."""
  config = helpers.tiny_config(tiny_root, session_cache_dir)
  config.model.name = "IDNN"
  config.train.epochs = 3
  config.train.num_seeds = 2
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, workdir)
  report = evaluate.evaluate(
    workdir, eval_ground_truth=tiny_root / "eval_data_list.csv"
  )
  return config, workdir, report


def _labels_from_names(names):
  return np.asarray([name.startswith("anomaly") for name in names], int)


def test_result_csv_equals_sklearn_on_the_written_scores(trained):
  _, workdir, report = trained
  table, overall = results.read_result_csv(
    workdir / "results" / "mse" / "result.csv"
  )
  assert table.keys() == report["dev"].keys()
  for machine_type, by_id in table.items():
    for machine_id, m in by_id.items():
      auc, pauc = m["auc"], m["pauc"]
      scores = results.read_scores(
        workdir
        / "results"
        / "mse"
        / results.score_csv_name(2020, machine_type, machine_id)
      )
      names = sorted(scores)
      labels = _labels_from_names(names)
      values = [scores[n] for n in names]
      assert auc == pytest.approx(
        sk_metrics.roc_auc_score(labels, values), abs=1e-12
      )
      assert pauc == pytest.approx(
        sk_metrics.roc_auc_score(labels, values, max_fpr=0.1), abs=1e-12
      )
  per_type = [
    np.mean([(m["auc"], m["pauc"]) for m in b.values()], axis=0)
    for b in table.values()
  ]
  np.testing.assert_allclose(
    [overall["auc"], overall["pauc"]], np.mean(per_type, axis=0), atol=1e-12
  )


def test_evaluation_times_are_recorded(trained):
  _, workdir, _ = trained
  records = metric_log.read_records(layout.Workdir(workdir).metrics_file)
  timing = [r for r in records if "evaluate" in r][-1]["timing_s"]
  assert {"features", "restore", "score", "total"} <= timing.keys()


def test_result_csv_layout(trained):
  _, workdir, _ = trained
  rows = list(csv.reader(open(workdir / "results" / "mse" / "result.csv")))
  assert rows[0] == ["fan"] and rows[1] == ["id", "AUC", "pAUC"]
  average = next(i for i, r in enumerate(rows) if r and r[0] == "Average")
  assert rows[average + 1] == []
  assert rows[-1][0] == "Total Average"


def test_score_files_cover_every_test_clip_sorted(trained, tiny_root):
  _, workdir, _ = trained
  for test_dir in sorted(tiny_root.glob("dev_data/*/test")):
    machine_type = test_dir.parent.name
    wavs = sorted(p.name for p in test_dir.glob("*.wav"))
    ids = sorted({"_".join(n.split("_")[1:3]) for n in wavs})
    written = []
    for machine_id in ids:
      path = (
        workdir
        / "results"
        / "mse"
        / results.score_csv_name(2020, machine_type, machine_id)
      )
      rows = [r[0] for r in csv.reader(open(path))]
      assert rows == sorted(rows)
      written += rows
    assert sorted(written) == wavs


def test_eval_set_scores_match_the_ground_truth_list(trained, tiny_root):
  _, workdir, report = trained
  truth = results.read_ground_truth(tiny_root / "eval_data_list.csv", 2020)
  for machine_type, labels in truth.items():
    written = {}
    for path in (workdir / "results" / "mse" / "eval").glob(
      f"anomaly_score_{machine_type}_id_*.csv"
    ):
      written.update(results.read_scores(path))
    assert sorted(written) == sorted(labels)
  assert report["eval"].keys() == truth.keys()
  assert (workdir / "results" / "mse" / "eval" / "result.csv").exists()


def test_seed_ensemble_is_the_mean_of_seed_scores(trained):
  config, workdir, report = trained
  assert len(report["seeds"]) == config.train.num_seeds
  features, groups = dataset.load(config, show_progress=False)
  setup, params, batch_stats, _ = restore.load_weights(
    config, layout.Workdir(workdir), [g.name for g in groups], "best"
  )
  per_seed = group_scoring.score_groups(
    config,
    features,
    setup,
    params,
    batch_stats,
    [group_scoring.dev_test_clips(features, g) for g in groups],
  )
  group = groups[0]
  clips = group_scoring.dev_test_clips(features, group)
  written = {}
  for path in (workdir / "results" / "mse").glob(
    f"anomaly_score_{group.name}_*.csv"
  ):
    written.update(results.read_scores(path))
  ensemble = per_seed[0].mean(0)
  for c, s in zip(clips, ensemble):
    assert written[features.clips[c].name] == pytest.approx(s, rel=1e-6)


def test_real_ground_truth_list_parses():
  if not GROUND_TRUTH.exists():
    pytest.skip("../shared/reference/eval_data_list.csv is not beside the repo")
  truth = results.read_ground_truth(GROUND_TRUTH, 2020)
  # Eval test normal/anomaly counts from ../shared/reference/ANCHORS.md.
  expected = {
    "ToyCar": (750, 795),
    "ToyConveyor": (600, 1065),
    "fan": (309, 1033),
    "pump": (300, 477),
    "slider": (300, 534),
    "valve": (300, 640),
  }
  for machine_type, (normal, anomaly) in expected.items():
    labels = np.asarray([label for label, _ in truth[machine_type].values()])
    assert (np.sum(labels == 0), np.sum(labels == 1)) == (normal, anomaly)


def test_result_csv_round_trip(tmp_path):
  table = {
    "fan": {
      "id_00": {"auc": 0.75, "pauc": 0.6},
      "id_02": {"auc": 0.5, "pauc": 0.55},
    },
    "valve": {"id_01": {"auc": 1.0, "pauc": 1.0}},
  }
  results.write_result_csv(tmp_path / "r.csv", 2020, table)
  read, overall = results.read_result_csv(tmp_path / "r.csv")
  assert read == table
  np.testing.assert_allclose(
    [overall["auc"], overall["pauc"]],
    [(0.625 + 1.0) / 2, (0.575 + 1.0) / 2],
  )


@pytest.mark.numerics
def test_ragged_clip_scores_equal_scoring_each_clip_alone(trained):
  config, workdir, _ = trained
  features, groups = dataset.load(config, show_progress=False)
  setup, params, batch_stats, _ = restore.load_weights(
    config, layout.Workdir(workdir), [g.name for g in groups], "latest"
  )
  clips = list(groups[0].test_clips[:3])
  # Make the lengths ragged: score a shortened copy of the first clip too.
  lengths = features.lengths.copy()
  lengths[clips[0]] -= 7
  ragged = features.__class__(
    features.directory,
    features.frames,
    features.clips,
    features.offsets,
    lengths,
    (),
  )
  for pooling in reconstruction.POOLINGS:
    config.score.pooling = pooling
    # One clip list per model: every model scores the clips, half reversed.
    orders = [
      clips if m % 2 else clips[::-1] for m in range(len(setup.model_names))
    ]
    together = group_scoring.score_models(
      config, ragged, setup, params, batch_stats, orders
    )
    for m, order in enumerate(orders):
      model = jax.tree.map(lambda x, m=m: x[m], (params, batch_stats))
      for c, score in zip(order, together[m]):
        frames = ragged.clip_frames(c)
        starts = jnp.arange(len(frames) - 4)
        errors = reconstruction.vector_errors(
          setup.graphdef,
          *model,
          window_data.gather_windows(jnp.asarray(frames), starts, 5),
          setup.interpolate,
        )
        expected = _numpy_pool(
          np.asarray(errors, np.float64), pooling, config.score.gwrp_decay
        )
        # Float32 summed in other orders. To first order each of the 6 dense
        # layers' sums of <= 64 products errs by 64 u relative to the dB
        # features' scale (|x| <= 100); a vector's squared error e moves by
        # 2 sqrt(e) times that, so a pooled score by 2 * 6 * 64 * u * 100 /
        # sqrt(score) (Cauchy-Schwarz), plus 64 u for pooling <= 64 windows.
        u = np.finfo(np.float32).eps / 2
        assert score == pytest.approx(
          expected, rel=2 * 6 * 64 * u * 100 / np.sqrt(expected) + 64 * u
        )


def _numpy_pool(errors, pooling, decay):
  if pooling == "mean":
    return errors.mean()
  if pooling == "max":
    return errors.max()
  weights = decay ** np.arange(len(errors))
  return np.sum(weights * np.sort(errors)[::-1]) / weights.sum()


def test_gwrp_limits():
  errors = jnp.asarray([[3.0, 1.0, 2.0, 9.0]])
  mask = jnp.asarray([[True, True, True, False]])
  assert float(
    reconstruction.pool(errors, mask, "gwrp", 1.0)[0]
  ) == pytest.approx(2.0)
  assert float(
    reconstruction.pool(errors, mask, "gwrp", 0.0)[0]
  ) == pytest.approx(3.0)
  assert float(reconstruction.pool(errors, mask, "max", 0.5)[0]) == 3.0


def test_gamma_threshold_recovers_the_percentile():
  rng = np.random.default_rng(0)
  samples = scipy.stats.gamma.rvs(3.0, scale=2.0, size=4000, random_state=rng)
  expected = scipy.stats.gamma.ppf(0.9, 3.0, scale=2.0)
  assert group_scoring.fit_threshold(samples, 90) == pytest.approx(
    expected, rel=0.05
  )


def test_decisions_and_thresholds_are_written(trained):
  config, workdir, report = trained
  rows = list(csv.reader(open(workdir / "results" / "mse" / "decisions.csv")))
  assert rows[0] == ["type", "id", "files", "precision", "recall", "F1"]
  assert len(rows) - 1 == len(report["decisions"])
  stored = run_identity.load_config(workdir)  # The workdir stays readable.
  assert stored.model.name == config.model.name
  assert layout.Workdir(workdir).thresholds_file.exists()


def test_new_recordings_are_scored_and_bad_files_reported(
  trained, tiny_root, tmp_path, capsys
):
  _, workdir, _ = trained
  folder = tmp_path / "recordings"
  folder.mkdir()
  sources = sorted((tiny_root / "dev_data" / "valve" / "test").glob("*.wav"))
  for source in sources[:3]:
    (folder / source.name).write_bytes(source.read_bytes())
  (folder / "broken.wav").write_text("not audio")
  rows = recordings.score_recordings(workdir, folder, machine_type="valve")
  by_name = {pathlib.Path(r["path"]).name: r for r in rows}
  assert "error" in by_name["broken.wav"]
  assert "broken.wav" in by_name["broken.wav"]["error"]
  written = {}
  for path in (workdir / "results" / "mse").glob("anomaly_score_valve_*.csv"):
    written.update(results.read_scores(path))
  for source in sources[:3]:
    row = by_name[source.name]
    assert row["score"] == pytest.approx(written[source.name], rel=1e-5)
    assert row["anomaly"] == (row["score"] > row["threshold"])
  printed = capsys.readouterr().out
  assert "ERROR" in printed and ("ANOMALY" in printed or "normal" in printed)


def test_new_recordings_need_a_known_machine_type(trained, tiny_root):
  _, workdir, _ = trained
  wav = next((tiny_root / "dev_data" / "fan" / "test").glob("*.wav"))
  with pytest.raises(AeasdError, match=r"--machine_type=None: expected one"):
    recordings.score_recordings(workdir, wav)
  with pytest.raises(AeasdError, match=r"--machine_type=pump"):
    recordings.score_recordings(workdir, wav, machine_type="pump")


def test_checkpoint_choice_errors(trained):
  _, workdir, _ = trained
  with pytest.raises(AeasdError, match="expected best, latest or an epoch"):
    evaluate.evaluate(workdir, which="newest")
  with pytest.raises(AeasdError, match="no checkpoint for epoch 99"):
    evaluate.evaluate(workdir, which="99")


def test_plots_are_written_or_need_the_plot_extra(trained):
  _, workdir, report = trained
  if importlib.util.find_spec("matplotlib") is None:
    with pytest.raises(AeasdError, match=r"pip install -e \.\[plot\]"):
      evaluate.evaluate(workdir, plots=True)
    return
  evaluate.evaluate(workdir, plots=True)
  # One per id, the unit each table row is for.
  for machine_type, by_id in report["dev"].items():
    for machine_id in by_id:
      png = (
        workdir / "results" / "mse" / f"plot_{machine_type}_{machine_id}.png"
      )
      assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_of_another_config_is_refused(trained, tmp_path):
  _, workdir, _ = trained
  other = tmp_path / "other"
  shutil.copytree(workdir, other)
  config = json.loads((other / "config.json").read_text())
  config["model"]["hidden"] = 32
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(AeasdError, match="does not fit this config"):
    evaluate.evaluate(other)


def test_decision_report_matches_the_decision_files(trained):
  _, workdir, report = trained
  for (machine_type, machine_id), entry in report["decisions"].items():
    decided = dict(
      csv.reader(
        open(
          workdir
          / "results"
          / "mse"
          / f"decision_result_{machine_type}_{machine_id}.csv"
        )
      )
    )
    names = sorted(decided)
    labels = _labels_from_names(names)
    predictions = np.asarray([int(decided[n]) for n in names])
    assert entry["n"] == len(names)
    assert entry["precision"] == pytest.approx(
      sk_metrics.precision_score(labels, predictions, zero_division=0.0)
    )
    assert entry["recall"] == pytest.approx(
      sk_metrics.recall_score(labels, predictions, zero_division=0.0)
    )
    assert entry["f1"] == pytest.approx(
      sk_metrics.f1_score(labels, predictions, zero_division=0.0)
    )


@pytest.mark.parametrize("label", ["same", "other"])
def test_ground_truth_listing_a_clip_twice_is_refused(
  tiny_root, tmp_path, label
):
  path = tmp_path / "eval_data_list.csv"
  lines = (tiny_root / "eval_data_list.csv").read_text().splitlines()
  name, original, value = lines[1].split(",")
  value = value if label == "same" else str(1 - int(value))
  path.write_text("\n".join([*lines, lines[0], f"{name},{original},{value}"]))
  with pytest.raises(AeasdError) as error:
    results.read_ground_truth(path, 2020)
  assert str(error.value) == (
    f"{path}:{len(lines) + 2}: {name} is listed again (first at {path}:2);"
    " expected one row per clip"
  )


def _copy_run(workdir, tmp_path):
  """A copy of the module's run, whose results a test may replace."""
  return shutil.copytree(workdir, tmp_path / "run")


def test_ground_truth_of_a_clip_not_in_the_data_needs_the_partial_flag(
  trained, tiny_root, tmp_path, capsys
):
  _, workdir, report = trained
  workdir = _copy_run(workdir, tmp_path)
  listed = (tiny_root / "eval_data_list.csv").read_text()
  truth = tmp_path / "eval_data_list.csv"
  truth.write_text(f"{listed}fan\nid_09_00000000.wav,x.wav,1\n")
  with pytest.raises(AeasdError, match="needs --eval_ground_truth"):
    evaluate.evaluate(workdir, partial_ground_truth=True)
  with pytest.raises(AeasdError) as error:
    evaluate.evaluate(workdir, eval_ground_truth=truth)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(
    f"--eval_ground_truth={truth}: holds clips with no eval test file in the"
    " data (1): fan/id_09_00000000.wav; expected"
  )
  assert "--partial_ground_truth" in message
  clips = sum(map(len, results.read_ground_truth(truth, 2020).values()))
  types = len(report["eval"])
  coverage = (
    f"{types} of {types} machine types, {clips - 1} of {clips} ground-truth"
    " clips"
  )
  capsys.readouterr()
  partial = evaluate.evaluate(
    workdir, eval_ground_truth=truth, partial_ground_truth=True
  )
  assert partial["eval_partial"] == coverage
  # The clips scored are those of the whole ground truth: the same table.
  assert partial["eval"] == report["eval"]
  assert f"eval set (PARTIAL: {coverage})" in capsys.readouterr().out
  out = layout.Workdir(workdir).results_for("mse")
  rows = list(csv.reader(open(out / "eval" / "result.csv")))
  assert rows[-1][0] == f"Total Average (PARTIAL: {coverage})"
  assert not [r for r in rows if r and r[0] == "Total Average"]
  record = json.loads(
    layout.Workdir(workdir).evaluation_file("mse").read_text()
  )
  assert record["eval_partial"] is True
  assert record["eval_partial_coverage"] == coverage
