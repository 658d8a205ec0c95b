"""ROC curves and score histograms as PNGs (evaluate.py --plots).

matplotlib is the optional [plot] extra; without it, say so and go on.
"""

import numpy as np

from aeasd_jax import metrics
from aeasd_jax import workdir_files
from aeasd_jax.errors import AeasdError


def write(folder, features, groups, clip_lists, scores_per_group):
  """One ROC and one normal-vs-anomaly histogram PNG per machine type."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise AeasdError(
      "--plots needs matplotlib: pip install -e .[plot]"
    ) from None
  by_type = {}
  for clips, scores in zip(clip_lists, scores_per_group):
    for c, s in zip(clips, scores):
      clip = features.clips[c]
      by_type.setdefault(clip.machine_type, []).append((clip.label, s))
  for machine_type, pairs in sorted(by_type.items()):
    labels, scores = np.asarray(pairs).T
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    fig, (roc, hist) = plt.subplots(1, 2, figsize=(10, 4))
    roc.plot(fpr, tpr)
    roc.plot([0, 1], [0, 1], "k:")
    roc.set(
      xlabel="false positive rate",
      ylabel="true positive rate",
      title=f"{machine_type}: AUC {metrics.roc_auc_score(labels, scores):.3f}",
    )
    bins = np.linspace(scores.min(), scores.max(), 40)
    hist.hist(scores[labels == 0], bins, alpha=0.6, label="normal")
    hist.hist(scores[labels == 1], bins, alpha=0.6, label="anomaly")
    hist.set(xlabel="anomaly score", ylabel="clips", title=machine_type)
    hist.legend()
    fig.tight_layout()
    with workdir_files.atomic_open(
      folder / f"plot_{machine_type}.png", "wb"
    ) as f:
      fig.savefig(f, format="png")
    plt.close(fig)
