"""Classes for the classifiers, read from the clips' names.

"section" (STgram-MFN's machine ids): one class per machine type and id in
2020 (41 on the real dev and additional training sets) or per machine type
and section from 2021, across every type, so one model serves them all.
"""

import numpy as np

from aeasd_jax.errors import AeasdError

SCHEMES = ("section",)


def class_of(clip, scheme):
  """The class name of a dcase.Clip under a label scheme."""
  del scheme  # "section" is the only scheme so far.
  return f"{clip.machine_type}/{clip.section}"


def class_names(clips, training_clips, scheme):
  """The sorted class names of the training clips (indices into `clips`)."""
  return sorted({class_of(clips[c], scheme) for c in training_clips})


def clip_labels(clips, names, scheme):
  """[len(clips)] int32 class of every clip, -1 where its class is untrained."""
  row = {name: i for i, name in enumerate(names)}
  return np.asarray(
    [row.get(class_of(clip, scheme), -1) for clip in clips], np.int32
  )


def check_labelled(clips, labels, indices, scheme):
  """Refuses clips of a class without training clips: no logit scores them."""
  for c in indices:
    if labels[c] < 0:
      name = class_of(clips[c], scheme)
      raise AeasdError(
        f"{clips[c].path}: class {name} has no training clips, so a"
        f" classifier cannot score it; expected training clips of {name}"
        " (config.data.use_eval_train=True for the eval set's own ids)"
      )
