"""Nearest-neighbour scores of a classifier's embeddings.

A clip scores the cosine distance from its embedding to the nearest training
embedding of its own class (machine type and id, or section): a normal clip
lies near some normal clip of its machine, an anomaly lies apart.
"""

import numpy as np

from aeasd_jax.errors import AeasdError


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(embeddings, labels, reference, reference_labels):
  """[n] float64 cosine distance to the nearest same-class reference.

  Args:
    embeddings: [n, d] the scored clips' embeddings.
    labels: [n] their classes.
    reference: [m, d] training embeddings.
    reference_labels: [m] their classes.
  """
  embeddings, reference = _unit(embeddings), _unit(reference)
  scores = np.empty(len(labels), np.float64)
  for label in np.unique(labels):
    scored = labels == label
    same = reference[reference_labels == label]
    if not len(same):
      raise AeasdError(
        f"class {label} has no training embeddings to compare with; expected"
        " training clips of every scored class"
      )
    # Distance 1 - cos, so that the nearest is the largest cosine.
    scores[scored] = 1.0 - np.max(embeddings[scored] @ same.T, axis=1)
  return scores
