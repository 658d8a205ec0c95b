"""DCASE 2021+ evaluation, read back the way the official evaluators read it.

Each test re-derives the year's metrics from the written score files with
scikit-learn and scipy, as the evaluators do: rows sorted by file name and
matched by position to the ground truth, also sorted.
"""

import csv
import json
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as sk_metrics

import helpers
from aeasd_jax.evaluation import evaluate
from aeasd_jax.metrics import official_score
from aeasd_jax.metrics import roc
from aeasd_jax.evaluation import plots
from aeasd_jax.evaluation import recordings
from aeasd_jax.metrics import result_tables
from aeasd_jax.evaluation import results
from aeasd_jax import synth
from aeasd_jax.training import train
from aeasd_jax.errors import AeasdError
from aeasd_jax.workdir import layout

EPS = sys.float_info.epsilon
_FULL_NAME = re.compile(
  r"^section_\d\d_(source|target)_(?:train|test)_(normal|anomaly)_"
)


def _sorted_rows(path):
  """A headerless `name,value` CSV's rows, sorted as the evaluators sort."""
  with open(path, newline="") as f:
    return sorted(csv.reader(f))


def _result_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _official_line(rows, name):
  (row,) = [r for r in rows if r and r[0] == name]
  assert row[1] == ""
  return float(row[2])


def _section_row(rows, machine_type, section):
  """The values of a type's section row in result.csv."""
  start = rows.index([machine_type])
  for row in rows[start + 2 :]:
    if row and row[0] == section:
      return [float(v) for v in row[1:]]
  raise AssertionError(f"no row {section} for {machine_type}")


def _evaluator_2022(labels, scores, domains):
  """AUC(source), AUC(target), pAUC as the 2022-2025 evaluators compute them."""
  values = []
  for d in (0, 1):
    keep = (domains == d) | (labels != 0)
    values.append(sk_metrics.roc_auc_score(labels[keep], scores[keep]))
  values.append(sk_metrics.roc_auc_score(labels, scores, max_fpr=0.1))
  return values


@pytest.fixture(scope="module")
def root_2023(tmp_path_factory):
  return synth.generate(
    tmp_path_factory.mktemp("synth23") / "data",
    year=2023,
    seed=0,
    clips_per_id=8,
    seconds=1.0,
  )


@pytest.fixture(scope="module")
def run_2023(root_2023, tmp_path_factory, session_cache_dir):
  config = helpers.tiny_config(root_2023, session_cache_dir)
  config.data.dcase_year = 2023
  workdir = tmp_path_factory.mktemp("run23")
  train.train_and_evaluate(config, workdir)
  report = evaluate.evaluate(
    workdir, eval_ground_truth=root_2023 / "ground_truth"
  )
  return workdir, report


def test_dev_result_csv_is_what_the_evaluator_computes(run_2023):
  workdir, report = run_2023
  out = workdir / "results" / "mse"
  rows = _result_rows(out / "result.csv")
  values = []
  for machine_type in sorted(synth.MACHINE_TYPES):
    scored = _sorted_rows(
      out / f"anomaly_score_{machine_type}_section_00_test.csv"
    )
    names = [name for name, _ in scored]
    fields = [_FULL_NAME.match(n).groups() for n in names]
    labels = np.array([label == "anomaly" for _, label in fields], int)
    domains = np.array([domain == "target" for domain, _ in fields], int)
    scores = np.array([float(s) for _, s in scored])
    expected = _evaluator_2022(labels, scores, domains)
    written = _section_row(rows, machine_type, "00")
    # Column order: AUC (source), AUC (target), pAUC, ... as the baseline.
    assert written[:3] == expected
    values.append(expected)
    # The decision file lists the same clips, sorted, as 0 or 1.
    decided = _sorted_rows(
      out / f"decision_result_{machine_type}_section_00_test.csv"
    )
    assert [n for n, _ in decided] == names
    assert {d for _, d in decided} <= {"0", "1"}
  # Every AUC(source), then AUC(target), then pAUC, as the evaluators list
  # them: the order moves the last bits of the mean.
  official = scipy.stats.hmean(np.maximum(np.array(values).T.ravel(), EPS))
  assert _official_line(rows, "official score") == official
  assert report["score"] == official


def test_eval_result_matches_the_ground_truth_by_sorted_position(
  run_2023, root_2023
):
  workdir, report = run_2023
  out = workdir / "results" / "mse" / "eval"
  truth = root_2023 / "ground_truth"
  values = []
  for machine_type in sorted(synth.MACHINE_TYPES):
    name = f"ground_truth_{machine_type}_section_01_test.csv"
    scored = _sorted_rows(
      out / f"anomaly_score_{machine_type}_section_01_test.csv"
    )
    labels = _sorted_rows(truth / "ground_truth_data" / name)
    domains = _sorted_rows(truth / "ground_truth_domain" / name)
    # The evaluators check only the lengths; the names must line up too.
    assert [n for n, _ in scored] == [n for n, _ in labels]
    values.append(
      _evaluator_2022(
        np.array([int(v) for _, v in labels]),
        np.array([float(v) for _, v in scored]),
        np.array([int(v) for _, v in domains]),
      )
    )
  rows = _result_rows(out / "result.csv")
  official = scipy.stats.hmean(np.maximum(np.array(values).T.ravel(), EPS))
  assert _official_line(rows, "official score") == official
  assert set(report["eval"]) == set(synth.MACHINE_TYPES)


def test_result_csv_layout_of_2023(run_2023):
  workdir, _ = run_2023
  rows = _result_rows(workdir / "results" / "mse" / "result.csv")
  assert rows[0] == ["fan"]
  assert rows[1] == [
    "section",
    "AUC (source)",
    "AUC (target)",
    "pAUC",
    "pAUC (source)",
    "pAUC (target)",
    "precision (source)",
    "precision (target)",
    "recall (source)",
    "recall (target)",
    "F1 score (source)",
    "F1 score (target)",
  ]
  assert rows[2][0] == "00"
  # The mean rows hold no section column: 11 values under the 11 roc.
  assert rows[3][0] == "arithmetic mean" and len(rows[3]) == 12
  assert rows[4][0] == "harmonic mean" and len(rows[4]) == 12
  assert rows[-2][0] == "official score"
  assert rows[-1][0] == "official score ci95"
  assert 0 < float(rows[-1][2]) < 1


def _to_2021(root_2023, root):
  """The 2023-style set rewritten in DCASE 2021's layout and names.

  Test clips go to source_test/ and target_test/ without attributes; blind
  eval names keep their domain; the ground truth is one file per domain.
  """
  truth = root_2023 / "ground_truth"
  for machine_type in sorted(synth.MACHINE_TYPES):
    for subset in ("dev_data", "eval_data"):
      source = root_2023 / subset / "raw" / machine_type
      target = root / subset / machine_type
      shutil.copytree(source / "train", target / "train")
      if subset == "dev_data":
        for path in sorted((source / "test").iterdir()):
          parts = path.stem.split("_")
          name = "_".join(parts[:6]) + ".wav"  # Attributes dropped.
          folder = target / f"{parts[2]}_test"
          folder.mkdir(parents=True, exist_ok=True)
          shutil.copy(path, folder / name)
        continue
      gt_name = f"ground_truth_{machine_type}_section_01_test.csv"
      labels = dict(_sorted_rows(truth / "ground_truth_data" / gt_name))
      domains = dict(_sorted_rows(truth / "ground_truth_domain" / gt_name))
      by_domain = {"source": [], "target": []}
      for blind in sorted(labels):
        domain = ("source", "target")[int(domains[blind])]
        number = blind.removesuffix(".wav").split("_")[-1]
        name = f"section_01_{domain}_test_{number}.wav"
        folder = target / f"{domain}_test"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "test" / blind, folder / name)
        by_domain[domain].append(f"{name},{labels[blind]}\n")
      for domain, lines in by_domain.items():
        path = (
          root
          / "ground_truth"
          / "ground_truth_data"
          / f"ground_truth_{machine_type}_section_01_{domain}_test.csv"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines))
  return root


def test_2021_is_detected_and_scored_per_domain(
  root_2023, tmp_path, session_cache_dir
):
  root = _to_2021(root_2023, tmp_path / "d21")
  config = helpers.tiny_config(root, session_cache_dir)
  config.train.epochs = 1
  train.train_and_evaluate(config, tmp_path / "run")
  report = evaluate.evaluate(
    tmp_path / "run", eval_ground_truth=root / "ground_truth"
  )
  assert report["year"] == 2021
  for subset, section, truth_of in (
    ("", "00", None),
    ("eval", "01", root / "ground_truth" / "ground_truth_data"),
  ):
    out = tmp_path / "run" / "results" / "mse" / subset
    values = []
    rows = _result_rows(out / "result.csv")
    assert rows[1] == [
      "section",
      "domain",
      "AUC",
      "pAUC",
      "precision",
      "recall",
      "F1 score",
    ]
    for machine_type in sorted(synth.MACHINE_TYPES):
      for domain in ("source", "target"):
        stem = f"{machine_type}_section_{section}_{domain}_test"
        scored = _sorted_rows(out / f"anomaly_score_{stem}.csv")
        if truth_of is None:
          labels = [int("_anomaly_" in n) for n, _ in scored]
        else:
          truth = _sorted_rows(truth_of / f"ground_truth_{stem}.csv")
          assert [n for n, _ in truth] == [n for n, _ in scored]
          labels = [int(v) for _, v in truth]
        scores = [float(v) for _, v in scored]
        values += [
          sk_metrics.roc_auc_score(labels, scores),
          sk_metrics.roc_auc_score(labels, scores, max_fpr=0.1),
        ]
    # 2021's order: types, then domains, then sections (one here).
    official = scipy.stats.hmean(np.maximum(values, EPS))
    assert _official_line(rows, "official score") == official
    assert not [r for r in rows if r and r[0] == "official score ci95"]


def test_ground_truth_errors_name_the_folder(tmp_path):
  with pytest.raises(AeasdError, match="ground_truth_data/"):
    results.read_ground_truth(tmp_path, 2023)
  (tmp_path / "ground_truth_data").mkdir()
  (
    tmp_path / "ground_truth_data" / "ground_truth_fan_section_00_test.csv"
  ).write_text("section_00_0000.wav,1\n")
  with pytest.raises(AeasdError, match="ground_truth_domain"):
    results.read_ground_truth(tmp_path, 2023)
  with pytest.raises(AeasdError, match=r"_\(source\|target\)_test.csv"):
    results.read_ground_truth(tmp_path, 2021)
  # The subfolder given for the evaluator's folder: its parent is named.
  with pytest.raises(
    AeasdError, match=f"give --eval_ground_truth={tmp_path}\\)$"
  ):
    results.read_ground_truth(tmp_path / "ground_truth_data", 2023)


def test_mahalanobis_statistics_are_stored_once_per_weights(run_2023):
  workdir, mse_report = run_2023
  folder = layout.Workdir(workdir).mahalanobis
  # Training's covariance pass stored them for its best weights.
  (stored,) = folder.glob("*.npz")
  with np.load(stored) as f:
    fitted = dict(f)
  report = evaluate.evaluate(workdir, score_method="mahalanobis")
  assert list(folder.glob("*.npz")) == [stored]  # Restored, not refitted.
  assert report["dev"] != mse_report["dev"]
  stored.unlink()
  again = evaluate.evaluate(workdir, score_method="mahalanobis")
  # Fitted again from scratch: the same statistics and the same table.
  with np.load(stored) as f:
    for key, value in fitted.items():
      np.testing.assert_array_equal(f[key], value)
  assert again["dev"] == report["dev"]
  keys = set(json.loads((workdir / "thresholds.json").read_text()))
  assert {k.split(" ")[-1] for k in keys} >= {"mahalanobis"}
  assert any(" " not in k for k in keys)  # The MSE's thresholds stay.
  mse_again = evaluate.evaluate(workdir)
  assert mse_again["dev"] == mse_report["dev"]


@pytest.mark.parametrize("method", ["mse", "mahalanobis"])
def test_new_recordings_score_as_the_test_set(run_2023, root_2023, method):
  workdir, _ = run_2023
  clips = sorted((root_2023 / "dev_data/raw/valve/test").glob("*.wav"))[:2]
  rows = recordings.score_recordings(
    workdir, clips[0].parent, machine_type="valve", score_method=method
  )
  evaluate.evaluate(workdir, score_method=method)
  written = results.read_scores(
    workdir / "results" / method / "anomaly_score_valve_section_00_test.csv"
  )
  by_name = {pathlib.Path(r["path"]).name: r for r in rows}
  for clip in clips:
    row = by_name[clip.name]
    # The same windows scored in another batch: at most a reordering of the
    # float32 dot products, whose longest (frames x n_mels = 80 terms here)
    # bounds the relative change of each residual by 80 u = 4.8e-6, and of
    # a squared error or a quadratic form in them by twice that (the
    # Mahalanobis form more where P is ill-conditioned; these are small).
    assert row["score"] == pytest.approx(written[clip.name], rel=1e-5)
    assert row["anomaly"] == (row["score"] > row["threshold"])


def test_plots_draw_the_curves_the_table_measures(run_2023):
  workdir, report = run_2023
  evaluate.evaluate(workdir, plots=True)
  out = workdir / "results" / "mse"
  for machine_type in sorted(synth.MACHINE_TYPES):
    png = out / f"plot_{machine_type}_section_00.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scored = _sorted_rows(
      out / f"anomaly_score_{machine_type}_section_00_test.csv"
    )
    unit = [
      result_tables.ScoredClip(
        machine_type,
        "section_00",
        name,
        _FULL_NAME.match(name)[1],
        int(_FULL_NAME.match(name)[2] == "anomaly"),
        float(score),
        np.nan,
        False,
      )
      for name, score in scored
    ]
    labels = np.array([r.label for r in unit])
    scores = np.array([r.score for r in unit])
    curves = plots.roc_curves(2023, unit)
    assert [key for _, key, _ in curves] == ["auc_source", "auc_target"]
    for _, key, mask in curves:
      fpr, tpr, _ = roc.roc_curve(labels[mask], scores[mask])
      # The area under the drawn curve is the value in its title.
      assert np.trapezoid(tpr, fpr) == pytest.approx(
        report["dev"][machine_type]["section_00"][key], abs=1e-12
      )


def test_eval_sets_own_machine_types_train_and_score(
  root_2023, tmp_path, session_cache_dir
):
  # From 2023 the eval set holds other machine types than the dev set; here
  # the eval machines are renamed into types of their own.
  root = tmp_path / "own_types"
  shutil.copytree(root_2023 / "dev_data", root / "dev_data")
  for machine_type in synth.MACHINE_TYPES:
    shutil.copytree(
      root_2023 / "eval_data/raw" / machine_type,
      root / "eval_data/raw" / f"{machine_type}2",
    )
    for kind in ("data", "domain"):
      name = f"ground_truth_{machine_type}_section_01_test.csv"
      target = (
        root
        / "ground_truth"
        / f"ground_truth_{kind}"
        / name.replace(machine_type, f"{machine_type}2")
      )
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(
        root_2023 / "ground_truth" / f"ground_truth_{kind}" / name, target
      )
  config = helpers.tiny_config(root, session_cache_dir)
  config.train.epochs = 1
  config.train.select_by = "dev_auc"
  config.train.select_every = 1
  train.train_and_evaluate(config, tmp_path / "run")
  report = evaluate.evaluate(
    tmp_path / "run", eval_ground_truth=root / "ground_truth"
  )
  assert set(report["dev"]) == set(synth.MACHINE_TYPES)
  assert set(report["eval"]) == {f"{t}2" for t in synth.MACHINE_TYPES}
  groups = json.loads((tmp_path / "run" / "groups.json").read_text())
  assert len(groups) == 2 * len(synth.MACHINE_TYPES)


@pytest.mark.parametrize(
  "year,files,name",
  [
    # 2021: the same clip in a section's source and target files.
    (
      2021,
      {
        "ground_truth_data/ground_truth_fan_section_01_source_test.csv": (
          "section_01_source_test_0000.wav,0\n"
        ),
        "ground_truth_data/ground_truth_fan_section_01_target_test.csv": (
          "section_01_source_test_0001.wav,1\n"
          "section_01_source_test_0000.wav,1\n"
        ),
      },
      "ground_truth_fan_section_01_target_test.csv:2",
    ),
    # From 2022: twice in one file, with the same label.
    (
      2023,
      {
        "ground_truth_data/ground_truth_fan_section_01_test.csv": (
          "section_01_source_test_0000.wav,0\n"
          "section_01_source_test_0000.wav,0\n"
        ),
        "ground_truth_domain/ground_truth_fan_section_01_test.csv": (
          "section_01_source_test_0000.wav,0\n"
        ),
      },
      "ground_truth_fan_section_01_test.csv:2",
    ),
  ],
)
def test_ground_truth_listing_a_clip_twice_names_both_rows(
  tmp_path, year, files, name
):
  for relative, text in files.items():
    (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / relative).write_text(text)
  with pytest.raises(AeasdError) as error:
    results.read_ground_truth(tmp_path, year)
  first = sorted(files)[0].replace(".csv", ".csv:1")
  assert str(error.value) == (
    f"{tmp_path / 'ground_truth_data' / name}: section_01_source_test_0000.wav"
    f" is listed again (first at {tmp_path / first}); expected one row per"
    " clip"
  )


def _copy_run(workdir, tmp_path):
  """A copy of the module's run, whose results a test may replace."""
  return shutil.copytree(workdir, tmp_path / "run")


def test_ground_truth_of_another_machine_type_needs_the_partial_flag(
  run_2023, root_2023, tmp_path, capsys
):
  workdir, report = run_2023
  workdir = _copy_run(workdir, tmp_path)
  # The evaluator's folder, with one type more than the run scored.
  truth = shutil.copytree(root_2023 / "ground_truth", tmp_path / "truth")
  for kind in ("data", "domain"):
    folder = truth / f"ground_truth_{kind}"
    shutil.copy(
      folder / "ground_truth_fan_section_01_test.csv",
      folder / "ground_truth_pump_section_01_test.csv",
    )
  with pytest.raises(AeasdError) as error:
    evaluate.evaluate(workdir, eval_ground_truth=truth)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(
    f"--eval_ground_truth={truth}: holds machine types this run did not"
    " score (1): pump; expected"
  )
  capsys.readouterr()
  partial = evaluate.evaluate(
    workdir, eval_ground_truth=truth, partial_ground_truth=True
  )
  labels = results.read_ground_truth(truth, 2023)
  listed = sum(map(len, labels.values()))
  types = len(synth.MACHINE_TYPES)
  coverage = (
    f"{types} of {types + 1} machine types, {listed - len(labels['pump'])}"
    f" of {listed} ground-truth clips"
  )
  assert partial["eval_partial"] == coverage
  assert f"eval set (PARTIAL: {coverage})" in capsys.readouterr().out
  # The official score of the types there are, from the run's table over
  # exactly its eval clips.
  expected = official_score.official_score(2023, report["eval"])
  assert partial["eval_score"] == expected
  rows = _result_rows(workdir / "results" / "mse" / "eval" / "result.csv")
  assert _official_line(rows, f"official score (PARTIAL: {coverage})") == (
    expected
  )
  assert not [r for r in rows if r and r[0] == "official score"]


def _folder_bytes(folder):
  return {
    str(p.relative_to(folder)): p.read_bytes()
    for p in sorted(folder.rglob("*"))
    if p.is_file()
  }


def test_each_score_method_writes_a_folder_of_its_own(
  run_2023, root_2023, tmp_path
):
  workdir, _ = run_2023
  workdir = layout.Workdir(_copy_run(workdir, tmp_path))
  truth = root_2023 / "ground_truth"
  reports = {
    "mse": evaluate.evaluate(workdir, eval_ground_truth=truth),
    "mahalanobis": evaluate.evaluate(workdir, score_method="mahalanobis"),
  }
  assert sorted(p.name for p in workdir.results.iterdir()) == sorted(reports)
  assert reports["mse"]["score"] != reports["mahalanobis"]["score"]
  for method, report in reports.items():
    out = workdir.results_for(method)
    rows = _result_rows(out / "result.csv")
    assert _official_line(rows, "official score") == report["score"]
    record = json.loads(workdir.evaluation_file(method).read_text())
    assert record["score_method"] == method
    assert record["checkpoint"] == "best"
    assert re.fullmatch(r"best@\d+", record["weights"])
    assert record["eval_partial"] is False
    # Only the MSE evaluation had a ground truth.
    has_truth = method == "mse"
    assert record["eval_ground_truth"] == (str(truth) if has_truth else None)
    assert (out / "eval" / "result.csv").exists() == has_truth
    assert list((out / "eval").glob("anomaly_score_*.csv"))


def test_evaluating_without_ground_truth_drops_the_eval_result(
  run_2023, root_2023, tmp_path
):
  workdir, _ = run_2023
  workdir = layout.Workdir(_copy_run(workdir, tmp_path))
  out = workdir.results_for("mse")
  evaluate.evaluate(workdir, eval_ground_truth=root_2023 / "ground_truth")
  assert (out / "eval" / "result.csv").exists()
  evaluate.evaluate(workdir)
  assert not (out / "eval" / "result.csv").exists()
  assert list((out / "eval").glob("anomaly_score_*.csv"))
  record = json.loads(workdir.evaluation_file("mse").read_text())
  assert record["eval_ground_truth"] is None


def test_a_failed_evaluation_leaves_the_previous_results(
  run_2023, root_2023, tmp_path, monkeypatch
):
  workdir, _ = run_2023
  workdir = layout.Workdir(_copy_run(workdir, tmp_path))
  evaluate.evaluate(workdir, eval_ground_truth=root_2023 / "ground_truth")
  out = workdir.results_for("mse")
  before = _folder_bytes(out)
  listed = sorted(workdir.results.iterdir())
  assert "result.csv" in before and "eval/result.csv" in before
  write_scores = results.write_scores
  calls = []

  def failing_write_scores(path, names, scores):
    # Writes other scores than before, then fails midway.
    calls.append(path)
    if len(calls) == 2:
      raise RuntimeError("disk gone")
    write_scores(path, names, [s + 1 for s in scores])

  monkeypatch.setattr(results, "write_scores", failing_write_scores)
  with pytest.raises(RuntimeError, match="disk gone"):
    evaluate.evaluate(workdir)
  assert _folder_bytes(out) == before
  # Nothing half-built is left beside it.
  assert sorted(workdir.results.iterdir()) == listed


@pytest.mark.parametrize("file", ["results", "results/mse"])
def test_results_that_is_a_file_is_one_error(run_2023, tmp_path, file):
  workdir, _ = run_2023
  workdir = _copy_run(workdir, tmp_path)
  shutil.rmtree(workdir / "results")
  (workdir / file).parent.mkdir(exist_ok=True)
  (workdir / file).write_text("not a folder")
  with pytest.raises(AeasdError) as error:
    evaluate.evaluate(workdir)
  assert str(error.value).startswith(
    f"{workdir / file}: a file, not a folder; expected the folder of"
  )
  assert "\n" not in str(error.value)
  assert (workdir / file).read_text() == "not a folder"
