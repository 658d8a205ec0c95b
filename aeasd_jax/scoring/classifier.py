"""A classifier's per-clip outputs: its own class's -log softmax, embeddings.

The scores of STgram-MFN (liuyoude/STgram-MFN, trainer.py test()): the
logits carry the ArcFace margin at the clip's own class, as at training, so
the score is training's cross-entropy of that clip; and the embedding that
the nearest-neighbour score compares (scoring/neighbours.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aeasd_jax.errors import AeasdError


def clip_outputs(graphdef, params, batch_stats, example):
  """(-log softmax of each clip's own class [batch], embeddings [batch, d]).

  BatchNorm uses its running statistics, so a clip's score does not depend
  on the clips batched with it.
  """
  frames, labels, wave = example
  model = nnx.merge(graphdef, params, batch_stats)
  logits, embedding = model(wave, frames, labels, train=False)
  return own_class_nll(logits, labels), embedding


def own_class_nll(logits, labels):
  """-log softmax(logits)[label] per row: the reference's score."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  own = jnp.take_along_axis(
    jax.nn.log_softmax(logits), labels[:, None], axis=-1
  )
  return -own[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "clips_per_step"))
def _stacked_outputs(
  graphdef, params, batch_stats, frames, waves, labels, rows, clips_per_step
):
  """clip_outputs of stacked models, each on its own rows of clips.

  Args:
    frames: [clips, frames, n_mels] the packed clips' log-mels.
    waves: [clips, samples] their waveforms.
    labels: [clips] their classes.
    rows: [models, n] the packed clip each model scores; n divides by
      clips_per_step.

  Returns:
    ([models, n] scores, [models, n, d] embeddings)
  """
  num_models, n = rows.shape
  steps = rows.reshape(num_models, n // clips_per_step, clips_per_step)

  def step(_, chunk):  # chunk: [models, clips_per_step]
    example = (frames[chunk], labels[chunk], waves[chunk])
    return None, jax.vmap(clip_outputs, (None, 0, 0, 0))(
      graphdef, params, batch_stats, example
    )

  _, (scores, embeddings) = jax.lax.scan(step, None, steps.swapaxes(0, 1))
  return (
    scores.swapaxes(0, 1).reshape(num_models, n),
    embeddings.swapaxes(0, 1).reshape(num_models, n, -1),
  )


def outputs_of_clip_lists(
  graphdef, params, batch_stats, cache, labels, clip_lists, clips_per_step
):
  """Each model m's (scores, embeddings) of the cached clips clip_lists[m].

  Args:
    cache: a FeatureCache of fixed-length clips with their waveforms.
    labels: [cache clips] int32 class of every cached clip.
    clip_lists: one list of cache clip indices per model.
    clips_per_step: clips per model per device step; bounds memory.

  Returns:
    A list per model of (float64 scores [n], float32 embeddings [n, d]).
  """
  if cache.waves is None:
    raise AeasdError(
      f"feature cache {cache.directory}: no waveforms; expected a cache of"
      " clip examples built for a classifier (config.data.clip_seconds)"
    )
  used = sorted({c for clips in clip_lists for c in clips})
  if not used:
    return [(np.zeros(0), np.zeros((0, 0), np.float32)) for _ in clip_lists]
  position = {c: i for i, c in enumerate(used)}
  frames = np.stack([cache.clip_frames(c) for c in used])
  if not np.all(np.isfinite(frames)):
    raise AeasdError(
      f"feature cache {cache.directory}: non-finite values in the frames;"
      " expected finite log-mel frames. The cache is damaged: delete the"
      " folder to rebuild it"
    )
  longest = max((len(c) for c in clip_lists), default=1)
  clips_per_step = max(1, min(clips_per_step, longest))
  n = -(-longest // clips_per_step) * clips_per_step
  rows = np.zeros((len(clip_lists), n), np.int32)
  for m, clips in enumerate(clip_lists):
    rows[m, : len(clips)] = [position[c] for c in clips]
  scores, embeddings = _stacked_outputs(
    graphdef,
    params,
    batch_stats,
    jnp.asarray(frames),
    jnp.asarray(cache.waves[used]),
    jnp.asarray(labels[used]),
    rows,
    clips_per_step,
  )
  scores = np.asarray(scores, np.float64)
  embeddings = np.asarray(embeddings, np.float32)
  return [
    (scores[m, : len(clips)], embeddings[m, : len(clips)])
    for m, clips in enumerate(clip_lists)
  ]
