"""Dependencies among aeasd_jax modules run one way: no cycles, no reaching up.

Read from the source (imports inside functions included), so a cycle that a
lazy import would hide at run time is found too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "aeasd_jax"


def _imports():
  """{module: the aeasd_jax modules it imports}."""
  graph = {}
  for path in PACKAGE.glob("*.py"):
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == "aeasd_jax":
        found |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "aeasd_jax."
      ):
        found.add(node.module.split(".")[1])
      elif isinstance(node, ast.Import):
        found |= {
          a.name.split(".")[1]
          for a in node.names
          if a.name.startswith("aeasd_jax.")
        }
    graph[path.stem] = found - {path.stem}
  return graph


GRAPH = _imports()


def _closure(module):
  seen, todo = set(), [module]
  while todo:
    for dep in GRAPH[todo.pop()]:
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def test_the_graph_is_read():
  # A parser that found nothing would pass every check below.
  assert {"trainer", "state", "steps"} <= GRAPH["train"] | _closure("train")
  assert "checkpoint" in GRAPH["workdir_weights"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_itself_through_others(module):
  assert module not in _closure(module)


@pytest.mark.parametrize(
  "lower,higher",
  [
    # Evaluation and training share what lies below them, never each other.
    ("evaluation", "train"),
    ("train", "evaluation"),
    ("recordings", "train"),
    ("group_scoring", "train"),
    ("group_scoring", "evaluation"),
    ("workdir_weights", "evaluation"),
    # The pure step and the schema know nothing of placement or policy.
    ("steps", "trainer"),
    ("state", "trainer"),
    ("steps", "train"),
    ("trainer", "train"),
    # Process setup must not pull in the audio and cache stack.
    ("runtime", "dataset"),
    ("runtime", "cache"),
    ("runtime", "audio"),
  ],
)
def test_lower_modules_do_not_reach_up(lower, higher):
  assert higher not in _closure(lower)
