"""Window scores of a clip: when in it, and in which mel bands, the error is.

A clip's score pools its windows' reconstruction errors; `evaluate.py --wav`
also reports the windows that stand out. A window stands out when its error
exceeds the window threshold: the gamma fit, at config.score.segment_percentile,
of the highest window error of each held-out normal clip. So at the default
99, about one normal clip in a hundred shows a segment anywhere in it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aeasd_jax.data import window_data
from aeasd_jax.scoring import reconstruction


@functools.partial(
  jax.jit, static_argnames=("graphdef", "frames_per_window", "interpolate")
)
def _band_errors(
  graphdef, params, batch_stats, frames, *, frames_per_window, interpolate
):
  """[windows, n_mels] squared errors per mel band, mean over the models.

  Each window's error per band is the mean over its reconstructed frames
  (all of them for AE and VAE, the centre one for IDNN).
  """
  n_mels = frames.shape[-1]
  starts = jnp.arange(frames.shape[0] - frames_per_window + 1)
  windows = window_data.gather_windows(frames, starts, frames_per_window)

  def one_model(params, batch_stats):
    residuals = reconstruction.vector_residuals(
      graphdef, params, batch_stats, windows, interpolate
    )
    return jnp.mean(
      (residuals**2).reshape(residuals.shape[0], -1, n_mels), axis=1
    )

  return jnp.mean(jax.vmap(one_model)(params, batch_stats), axis=0)


def band_errors(setup, params, batch_stats, group, frames):
  """[windows, n_mels] errors of one clip's windows under a group's models.

  The models are the group's seeds, averaged as the clip score averages
  them. Lengths are padded to a bucket, so clips of nearby lengths share
  one compiled program.

  Args:
    setup: the run's state.Setup.
    params, batch_stats: every model's weights, stacked.
    group: the group's row in the run's groups.
    frames: [frames, n_mels] the clip's log-mel frames.
  """
  members = np.flatnonzero(np.asarray(setup.group_of_model) == group)
  take = lambda tree: jax.tree.map(lambda x: x[members], tree)
  windows = len(frames) - setup.frames_per_window + 1
  padded = reconstruction.bucket(len(frames), reconstruction.LENGTH_BUCKET)
  frames = np.pad(frames, ((0, padded - len(frames)), (0, 0)), mode="edge")
  errors = _band_errors(
    setup.graphdef,
    take(params),
    take(batch_stats),
    jnp.asarray(frames),
    frames_per_window=setup.frames_per_window,
    interpolate=setup.interpolate,
  )
  return np.asarray(errors[:windows])
