"""The DCASE Task 2 file formats: score CSVs, result.csv, ground truth.

The official evaluators read `anomaly_score_<...>.csv` and
`decision_result_<...>.csv` files, named per year (file_stem), and their
ground truth: 2020's `eval_data_list.csv`, or from 2021 a folder holding
`ground_truth_data/` (and from 2022 `ground_truth_domain/`), which must
cover exactly the clips scored (ground_truth_coverage).
"""

import csv
import io
import pathlib
import re

import numpy as np

from aeasd_jax.data import dcase
from aeasd_jax.metrics import official_score
from aeasd_jax.workdir import file_io
from aeasd_jax.errors import AeasdError


def file_stem(year, machine_type, section, domain):
  """What names a score or decision file after its prefix.

  2020: `<type>_id_XX`; 2021: `<type>_section_XX_<domain>_test`, one file
  per domain as its evaluator reads them; 2022 on: `<type>_section_XX_test`.
  """
  if year == 2020:
    return f"{machine_type}_{section}"
  if year == 2021:
    return f"{machine_type}_{section}_{domain}_test"
  return f"{machine_type}_{section}_test"


def score_csv_name(year, machine_type, section, domain=""):
  return f"anomaly_score_{file_stem(year, machine_type, section, domain)}.csv"


def decision_csv_name(year, machine_type, section, domain=""):
  return f"decision_result_{file_stem(year, machine_type, section, domain)}.csv"


def write_csv(path, rows):
  """Writes rows with the csv module, so a comma or quote in a name is quoted.

  Atomically, from process 0 only (file_io.write_text).
  """
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="\n").writerows(rows)
  file_io.write_text(path, buffer.getvalue())


def write_scores(path, names, scores):
  """`filename,score` rows sorted by file name, as the evaluator sorts them."""
  write_csv(
    path,
    ((name, repr(float(score))) for name, score in sorted(zip(names, scores))),
  )


def read_scores(path):
  """{filename: score} from an anomaly score CSV."""
  with open(path, newline="") as f:
    return {row[0]: float(row[1]) for row in csv.reader(f) if row}


def write_decisions(path, names, decisions):
  write_csv(path, ((name, int(d)) for name, d in sorted(zip(names, decisions))))


def write_result_csv(path, year, table, score=None, ci95=None, partial=None):
  """The year's result.csv.

  2020, the baseline's: for each type a row with the type, the header
  `id,AUC,pAUC`, a row per id, an `Average` row and a blank row; the last
  line is the overall average.

  2021 on, the official baseline's per-section layout under a row with the
  type: its header, a row per section (2021: per section and domain, as the
  2021 evaluator), `arithmetic mean` and `harmonic mean` rows (harmonic
  after clamping at machine epsilon, as the evaluators); then, near the end,
  `official score,,<score>` and, where the year's evaluator reports one,
  `official score ci95,,<half-width>`.

  A partial score (evaluate.py --partial_ground_truth) says so in the name
  of each summary row, `Total Average (PARTIAL: <coverage>)` or `official
  score (PARTIAL: <coverage>)`: a reader that looks for the usual name
  finds no score rather than a partial one taken for the official.

  Args:
    path: where to write.
    year: the DCASE year.
    table: {type: {section: metrics}} (result_tables.metric_table).
    score: the official score (2021 on).
    ci95: its jackknife half-width (2022 on), or None.
    partial: what a partial score covers, e.g. "3 of 6 machine types, 120
      of 360 ground-truth clips"; None for a score over the whole set.
  """
  label = lambda name: f"{name} (PARTIAL: {partial})" if partial else name
  if year == 2020:
    rows = _rows_2020(table, label("Total Average"))
  else:
    rows = []
    for machine_type, by_section in table.items():
      rows += [[machine_type], *_section_rows(year, by_section), []]
    rows.append([label("official score"), "", score])
    if ci95 is not None:
      rows.append([label("official score ci95"), "", ci95])
  write_csv(path, rows)


def _rows_2020(table, total_label):
  per_type, overall = official_score.type_averages(table)
  rows = []
  for machine_type, by_id in table.items():
    rows += [[machine_type], ["id", "AUC", "pAUC"]]
    rows += [
      [machine_id.removeprefix("id_"), m["auc"], m["pauc"]]
      for machine_id, m in by_id.items()
    ]
    rows += [
      [
        "Average",
        per_type[machine_type]["auc"],
        per_type[machine_type]["pauc"],
      ],
      [],
    ]
  rows.append([total_label, overall["auc"], overall["pauc"]])
  return rows


# The official baseline's columns (networks/base_model.py), as metric keys.
_SECTION_HEADER = (
  ("AUC (source)", "auc_source"),
  ("AUC (target)", "auc_target"),
  ("pAUC", "pauc"),
  ("pAUC (source)", "pauc_source"),
  ("pAUC (target)", "pauc_target"),
  ("precision (source)", "precision_source"),
  ("precision (target)", "precision_target"),
  ("recall (source)", "recall_source"),
  ("recall (target)", "recall_target"),
  ("F1 score (source)", "f1_source"),
  ("F1 score (target)", "f1_target"),
)
# The 2021 evaluator's columns, for one domain's clips.
_DOMAIN_HEADER = (
  ("AUC", "auc"),
  ("pAUC", "pauc"),
  ("precision", "precision"),
  ("recall", "recall"),
  ("F1 score", "f1"),
)


def _section_rows(year, by_section):
  """A type's header, per-section rows and mean rows."""
  if year == 2021:
    header = ["section", "domain", *(title for title, _ in _DOMAIN_HEADER)]
    values = [
      (
        [section.removeprefix("section_"), domain],
        [m[f"{key}_{domain}"] for _, key in _DOMAIN_HEADER],
      )
      for section, m in by_section.items()
      for domain in dcase.DOMAINS
    ]
    lead = ["", ""]
  else:
    header = ["section", *(title for title, _ in _SECTION_HEADER)]
    values = [
      ([section.removeprefix("section_")], [m[k] for _, k in _SECTION_HEADER])
      for section, m in by_section.items()
    ]
    lead = []
  matrix = np.array([v for _, v in values], np.float64)
  # The baseline's mean rows hold no section column: their values line up
  # with the header's metric columns from its second column on.
  return [
    header,
    *([*names, *v] for names, v in values),
    ["arithmetic mean", *lead[1:], *matrix.mean(0)],
    [
      "harmonic mean",
      *lead[1:],
      *official_score.harmonic_mean(matrix, axis=0),
    ],
  ]


def read_result_csv(path):
  """2020's result.csv: {type: {id: {"auc", "pauc"}}} and the overall pair.

  The overall pair is read from a partial score's row too.
  """
  table, machine_type, overall = {}, None, None
  with open(path, newline="") as f:
    for row in csv.reader(f):
      if not row or row[0] in ("id", "Average"):
        continue
      if row[0].startswith("Total Average"):
        overall = {"auc": float(row[1]), "pauc": float(row[2])}
      elif len(row) == 1:
        machine_type = row[0]
        table[machine_type] = {}
      else:
        table[machine_type][f"id_{row[0]}"] = {
          "auc": float(row[1]),
          "pauc": float(row[2]),
        }
  return table, overall


def read_ground_truth(path, year):
  """{machine_type: {eval file name: (label, domain)}} from a ground truth.

  2020: an eval_data_list.csv; its domains are "". From 2021: the
  evaluator's folder, holding ground_truth_data/ and, from 2022,
  ground_truth_domain/ (a 2021 file is per domain, which its name says).

  Raises:
    AeasdError: the path is not the year's form, or a row or file is not,
      or a clip is listed twice for its type (in 2021 also across a
      section's source and target files), whether the labels agree or not.
  """
  path = pathlib.Path(path)
  if year == 2020:
    if not path.is_file():
      raise AeasdError(
        f"--eval_ground_truth={path}: not a file; expected DCASE 2020's"
        " eval_data_list.csv"
      )
    return {
      t: {name: (label, "") for name, label in by_name.items()}
      for t, by_name in _read_eval_data_list(path).items()
    }
  labels = path / "ground_truth_data"
  if not labels.is_dir():
    # Its subfolder is the likeliest mistake: name the folder meant.
    hint = (
      f" (this is one of its subfolders: give"
      f" --eval_ground_truth={path.parent})"
      if path.name.startswith("ground_truth_")
      else ""
    )
    raise AeasdError(
      f"--eval_ground_truth={path}: no folder ground_truth_data/ inside;"
      f" expected the DCASE {year} evaluator's folder holding"
      " ground_truth_data/"
      + (" and ground_truth_domain/" if year > 2021 else "")
      + hint
    )
  truth, listed_at = {}, {}
  for file in sorted(labels.glob("ground_truth_*.csv")):
    match = _GROUND_TRUTH_FILE.match(file.name)
    if not match or (year == 2021) != bool(match["domain"]):
      raise AeasdError(
        f"{file}: unexpected name; expected ground_truth_<type>_section_XX"
        + ("_(source|target)" if year == 2021 else "")
        + "_test.csv"
      )
    by_name = truth.setdefault(match["type"], {})
    labels_of = _read_pairs(file, listed_at.setdefault(match["type"], {}))
    if year == 2021:
      domains = dict.fromkeys(labels_of, match["domain"])
    else:
      domain_file = path / "ground_truth_domain" / file.name
      domains = {
        name: dcase.DOMAINS[value]
        for name, value in _read_pairs(domain_file, {}).items()
      }
    for name, label in labels_of.items():
      if name not in domains:
        raise AeasdError(
          f"{domain_file}: no domain for {name}; expected a row for every"
          f" file of {file}"
        )
      by_name[name] = (label, domains[name])
  if not truth:
    raise AeasdError(f"{labels}: holds no ground_truth_*.csv files")
  return truth


def ground_truth_coverage(ground_truth_path, truth, scored, partial_allowed):
  """What a partial eval score covers; None when the ground truth is whole.

  Args:
    ground_truth_path: the --eval_ground_truth value.
    truth: its {type: {name: (label, domain)}}.
    scored: the (type, name) of every eval clip the run scores. One the
      ground truth lacks is an error later (evaluate.py), flag or not.
    partial_allowed: --partial_ground_truth.

  Raises:
    AeasdError: the ground truth lists clips or types the run did not score,
      and no partial score was asked for.
  """
  scored_types = {t for t, _ in scored} & set(truth)
  other_types = sorted(set(truth) - scored_types)
  unmatched = sorted(
    f"{t}/{name}"
    for t in scored_types
    for name in truth[t]
    if (t, name) not in scored
  )
  if not other_types and not unmatched:
    return None
  listed = sum(len(by_name) for by_name in truth.values())
  matched = sum(
    (t, name) in scored for t, by_name in truth.items() for name in by_name
  )
  if not partial_allowed:
    found = []
    if other_types:
      found.append(_some(other_types, "machine types this run did not score"))
    if unmatched:
      found.append(_some(unmatched, "clips with no eval test file in the data"))
    raise AeasdError(
      f"--eval_ground_truth={ground_truth_path}: holds {' and '.join(found)};"
      " expected the ground truth of exactly this run's eval clips (the"
      " official evaluators refuse any other), or --partial_ground_truth"
      f" for a score over the {matched} clips that have both a score and a"
      " label, labelled partial"
    )
  return (
    f"{len(scored_types)} of {len(truth)} machine types,"
    f" {matched} of {listed} ground-truth clips"
  )


def _some(names, what, shown=3):
  """`<what> (N): a, b, c, ...`: a count and the first few names."""
  more = ", ..." if len(names) > shown else ""
  return f"{what} ({len(names)}): {', '.join(names[:shown])}{more}"


_GROUND_TRUTH_FILE = re.compile(
  r"^ground_truth_(?P<type>.+)_(?P<section>section_\d+)"
  r"(?:_(?P<domain>source|target))?_test\.csv$"
)


def _read_pairs(path, seen):
  """{name: 0 or 1} from headerless `name,<0|1>` rows.

  `seen` ({name: where listed}) holds the names already read for the same
  clips, from other files; it gains this file's.
  """
  pairs = {}
  for line, row in _rows(path):
    if len(row) != 2 or row[1] not in ("0", "1"):
      raise AeasdError(
        f"{path}:{line}: unexpected row {row}; expected `<file name>,<0|1>`"
      )
    _list_once(seen, row[0], f"{path}:{line}")
    pairs[row[0]] = int(row[1])
  return pairs


def _list_once(seen, name, where):
  """Records where `name` is listed; a second row for it is an error.

  A second row that agrees is refused too: the evaluators match a ground
  truth file to a score file by sorted position, which a repeat shifts.
  """
  if name in seen:
    raise AeasdError(
      f"{where}: {name} is listed again (first at {seen[name]}); expected"
      " one row per clip"
    )
  seen[name] = where


def _rows(path):
  """(line number, row) of a CSV's non-empty rows, or a clear error."""
  try:
    with open(path, newline="") as f:
      return [(n, row) for n, row in enumerate(csv.reader(f), 1) if any(row)]
  except OSError as e:
    raise AeasdError(
      f"{path}: cannot read the ground truth ({e.strerror})"
    ) from None


def _read_eval_data_list(path):
  """{machine_type: {eval file name: label}} from an eval_data_list.csv.

  The list holds a row with a machine type, then rows of
  `id_XX_########.wav,<original name>,<0|1>`.
  """
  truth, listed_at, machine_type = {}, {}, None
  for line, row in _rows(path):
    if len(row) == 1:
      machine_type = row[0]
      truth.setdefault(machine_type, {})
    elif len(row) == 3 and machine_type and row[2] in ("0", "1"):
      seen = listed_at.setdefault(machine_type, {})
      _list_once(seen, row[0], f"{path}:{line}")
      truth[machine_type][row[0]] = int(row[2])
    else:
      raise AeasdError(
        f"{path}:{line}: unexpected row {row}; expected a machine type"
        " row or `id_XX_########.wav,<original name>,<0|1>`"
      )
  return truth
