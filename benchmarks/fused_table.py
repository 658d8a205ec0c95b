"""The fused-step table of issue 14 from train_speed.py's JSON files.

Usage: python benchmarks/fused_table.py RESULTS.json... [--markdown]

One row per setting and config.train.kernels: model-samples/s, the time per
training step (the epoch's, so its shuffle and validation are included), the
kernels of the loop body with the custom calls among them (Pallas kernels
are custom calls), compile time, speed over the XLA path of the same
setting, and over the PyTorch peer's CUDA graph where a file has it.
"""

import argparse
import json
import pathlib


def _key(record):
  return (
    record["model"],
    record["batch_size"],
    record["groups"],
    record["seeds"],
    record["compute_dtype"],
  )


def rows(records):
  """Table rows (dicts) of `records`, in their order."""
  xla = {_key(r): r for r in records if r["kernels"] == "xla"}
  peer = {
    r["batch_size"]: r["peer_samples_per_s"]
    for r in records
    if "peer_samples_per_s" in r
  }
  table = []
  for r in records:
    body = r.get("loop_body") or {}
    base = xla.get(_key(r))
    graph = peer.get(r["batch_size"], {}).get("cuda_graph")
    table.append(
      {
        "model": r["model"],
        "batch": r["batch_size"],
        "models": f"{r['groups']}x{r['seeds']}",
        "kernels": r["kernels"],
        "M samples/s": r["samples_per_s"] / 1e6,
        "step us": 1e6 * r["epoch_s"] / r["steps_per_epoch"],
        "loop kernels": body.get("kernels"),
        "custom calls": body.get("custom-call"),
        "compile s": r["compile_s"],
        "x xla": base and r["samples_per_s"] / base["samples_per_s"],
        "x peer graph": (
          graph and r["model"] == "AE" and r["samples_per_s"] / graph
        ),
        "finite": r["finite"],
      }
    )
  return table


def _cell(value):
  if isinstance(value, float):
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"
  return "-" if value is None else str(value)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("files", nargs="+", type=pathlib.Path)
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args(argv)
  records, headers = [], []
  for path in args.files:
    results = json.loads(path.read_text())
    headers.append((path.name, results["header"]))
    records += results["records"]
  for name, header in headers:
    versions = header.get("versions", {})
    print(
      f"{name}: {header.get('device_kind')}, jax {versions.get('jax')},"
      f" {header.get('date')}, XLA_FLAGS={header.get('xla_flags')!r}"
    )
  table = rows(records)
  if not table:
    return
  columns = list(table[0])
  if args.markdown:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in table:
      print("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
  else:
    widths = [max(len(c), 8) for c in columns]
    print(" ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in table:
      print(" ".join(_cell(row[c]).rjust(w) for c, w in zip(columns, widths)))


if __name__ == "__main__":
  main()
