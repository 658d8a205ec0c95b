"""Dependencies in aeasd_jax run one way, between modules and between folders.

Read from the source (imports inside functions included), so a cycle that a
lazy import would hide at run time is found too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "aeasd_jax"

# The folders from the bottom of the graph up: each may import the ones
# before it and the shared modules at the top level, never one after it.
FOLDERS = (
  "synth",
  "data",
  # `python -m aeasd_jax.download`: it reads the layouts of data.dcase.
  "download",
  "models",
  "metrics",
  "workdir",
  "scoring",
  "training",
  "evaluation",
)


def _module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node, package):
  """The aeasd_jax modules (or packages) an import statement names."""
  if isinstance(node, ast.Import):
    return {a.name for a in node.names if a.name.startswith("aeasd_jax")}
  if not isinstance(node, ast.ImportFrom) or node.level:
    return set()
  module = node.module or ""
  if not module.startswith("aeasd_jax"):
    return set()
  # `from aeasd_jax.data import cache` names a module; `from
  # aeasd_jax.errors import AeasdError` names a member of one.
  found = set()
  for alias in node.names:
    candidate = f"{module}.{alias.name}"
    found.add(candidate if candidate in package else module)
  return found


def _imports():
  """{module: the aeasd_jax modules it imports}, by dotted name."""
  paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in paths.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      found |= _imported(node, paths)
    graph[name] = found - {name}
  return graph


GRAPH = _imports()


def _closure(module):
  seen, todo = set(), [module]
  while todo:
    for dep in GRAPH.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def _folder(module):
  """The subpackage a module belongs to, or None for a top-level module."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else None


def test_the_graph_is_read():
  # A parser that found nothing would pass every check below.
  train = "aeasd_jax.training.train"
  assert {"aeasd_jax.training.trainer", "aeasd_jax.workdir.checkpoint"} <= (
    GRAPH[train]
  )
  assert "aeasd_jax.synth" in GRAPH["aeasd_jax.data.dataset"]
  assert {_folder(m) for m in GRAPH} == set(FOLDERS) | {None}


def test_every_module_is_in_a_folder_but_the_shared_ones():
  top = {m for m in GRAPH if _folder(m) is None}
  assert top == {
    "aeasd_jax",
    "aeasd_jax.errors",
    "aeasd_jax.cache_dir",
    "aeasd_jax.runtime",
  }


@pytest.mark.parametrize(
  "module", sorted(m for m in GRAPH if _folder(m) is None)
)
def test_a_top_level_module_imports_no_folder(module):
  assert not {_folder(dep) for dep in GRAPH[module]} - {None}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_itself_through_others(module):
  assert module not in _closure(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _folder(m)))
def test_folders_import_only_folders_below_them(module):
  rank = FOLDERS.index(_folder(module))
  above = {
    dep
    for dep in GRAPH[module]
    if _folder(dep) and FOLDERS.index(_folder(dep)) > rank
  }
  assert not above


@pytest.mark.parametrize(
  "lower,higher",
  [
    # Evaluation and the training loop share what lies below them.
    ("evaluation.evaluate", "training.train"),
    ("training.train", "evaluation.evaluate"),
    ("evaluation.recordings", "training.train"),
    ("scoring.group_scoring", "training.train"),
    ("training.restore", "training.train"),
    # The pure step and the schema know nothing of placement or policy.
    ("training.steps", "training.trainer"),
    ("training.state", "training.trainer"),
    ("training.steps", "training.train"),
    ("training.trainer", "training.train"),
  ],
)
def test_lower_modules_do_not_reach_up(lower, higher):
  assert f"aeasd_jax.{higher}" not in _closure(f"aeasd_jax.{lower}")


def test_process_setup_does_not_pull_in_the_audio_stack():
  assert not {_folder(m) for m in _closure("aeasd_jax.runtime")} - {None}
