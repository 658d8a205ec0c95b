"""The DCASE 2020 Task 2 file formats: score CSVs, result.csv, ground truth.

The official evaluator reads `anomaly_score_<type>_id_XX.csv` files and the
`eval_data_list.csv` ground truth; result.csv follows the baseline's layout.
"""

import csv
import io
import pathlib
import warnings

import numpy as np

from aeasd_jax import workdir_files
from aeasd_jax.errors import AeasdError


def score_csv_name(machine_type, machine_id):
  return f"anomaly_score_{machine_type}_{machine_id}.csv"


def write_csv(path, rows):
  """Writes rows with the csv module, so a comma or quote in a name is quoted.

  Atomically, from process 0 only (workdir_files.write_text).
  """
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="\n").writerows(rows)
  workdir_files.write_text(path, buffer.getvalue())


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


def averages(table):
  """({type: (auc, pauc)}, (auc, pauc) overall) of a table.

  An id whose AUC is undefined (nan: its labels are all of one class) is
  left out of the averages rather than making them all nan.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # An all-nan mean is nan.
    per_type = {
      t: tuple(np.nanmean(list(by_id.values()), axis=0))
      for t, by_id in table.items()
    }
    return per_type, tuple(np.nanmean(list(per_type.values()), axis=0))


def write_result_csv(path, table):
  """The baseline's result.csv.

  Args:
    path: where to write.
    table: {machine_type: {machine_id: (auc, pauc)}}.

  For each type: a row with the type, the header `id,AUC,pAUC`, a row per id,
  an `Average` row and a blank row; the last line is the overall average.
  """
  per_type, overall = averages(table)
  rows = []
  for machine_type, by_id in table.items():
    rows += [[machine_type], ["id", "AUC", "pAUC"]]
    rows += [
      [machine_id.removeprefix("id_"), auc, pauc]
      for machine_id, (auc, pauc) in by_id.items()
    ]
    rows += [["Average", *per_type[machine_type]], []]
  rows.append(["Total Average", *overall])
  write_csv(path, rows)


def read_result_csv(path):
  """{machine_type: {machine_id: (auc, pauc)}} and the overall average."""
  table, machine_type, overall = {}, None, None
  with open(path, newline="") as f:
    for row in csv.reader(f):
      if not row or row[0] in ("id", "Average"):
        continue
      if row[0] == "Total Average":
        overall = (float(row[1]), float(row[2]))
      elif len(row) == 1:
        machine_type = row[0]
        table[machine_type] = {}
      else:
        table[machine_type][f"id_{row[0]}"] = (float(row[1]), float(row[2]))
  return table, overall


def read_ground_truth(path):
  """{machine_type: {eval file name: label}} from an eval_data_list.csv.

  The list holds a row with a machine type, then rows of
  `id_XX_########.wav,<original name>,<0|1>`.
  """
  path = pathlib.Path(path)
  truth, machine_type = {}, None
  try:
    with open(path, newline="") as f:
      for line, row in enumerate(csv.reader(f), 1):
        if not row or not row[0]:
          continue
        if len(row) == 1:
          machine_type = row[0]
          truth.setdefault(machine_type, {})
        elif len(row) == 3 and machine_type and row[2] in ("0", "1"):
          truth[machine_type][row[0]] = int(row[2])
        else:
          raise AeasdError(
            f"{path}:{line}: unexpected row {row}; expected a machine type"
            " row or `id_XX_########.wav,<original name>,<0|1>`"
          )
  except OSError as e:
    raise AeasdError(
      f"{path}: cannot read the ground truth ({e.strerror})"
    ) from None
  return truth


def format_table(table, title):
  """The AE-ASD README style: AUC(%) (pAUC(%)) per type and the average."""
  per_type, overall = averages(table)
  lines = [title, f"{'type':<14} AUC(%) (pAUC(%))"]
  for name, (auc, pauc) in [*per_type.items(), ("Average", overall)]:
    lines.append(f"{name:<14} {auc * 100:6.2f} ({pauc * 100:5.2f})")
  return "\n".join(lines)
