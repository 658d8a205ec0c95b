"""Every detector by config.model.name: what it learns and how it is built.

Training, scoring and evaluation ask here what a model needs (windows or
whole clips, waveforms, classes) instead of testing model names themselves.
"""

import dataclasses

import jax.numpy as jnp

from aeasd_jax.data import dataset
from aeasd_jax.models import autoencoders
from aeasd_jax.models import stgram_mfn

RECONSTRUCTION = "reconstruction"
CLASSIFICATION = "classification"


@dataclasses.dataclass(frozen=True)
class Spec:
  task: str  # RECONSTRUCTION (windows of frames) or CLASSIFICATION (clips).
  uses_waveform: bool  # Whether the network reads each clip's waveform.
  scores: tuple  # The config.score.method values it supports.


_AUTOENCODER = Spec(RECONSTRUCTION, False, ("mse", "mahalanobis"))
SPECS = {
  **{name: _AUTOENCODER for name in autoencoders.MODELS},
  "STgramMFN": Spec(CLASSIFICATION, True, ("logprob", "knn")),
}


def spec(config):
  return SPECS[config.model.name]


def is_classifier(config):
  return spec(config).task == CLASSIFICATION


def interpolates(config):
  """Whether the targets are windows' centre frames (IDNN, VIDNN)."""
  spec = autoencoders.MODELS.get(config.model.name)
  return spec is not None and spec.interpolate


def example_frames(config):
  """Frames per example: a window (config.model.frames) or a whole clip.

  A clip of clip_samples samples gives the centred STFT's frame count (313
  for 10 s at 16 kHz, hop 512), which the Tgram's strided conv reproduces.
  """
  if not is_classifier(config):
    return config.model.frames
  return 1 + dataset.clip_samples(config) // config.features.hop_length


def build(config, rngs, num_classes=0):
  """The network config.model.name names, sized by the config."""
  if not is_classifier(config):
    return autoencoders.build(config.model, rngs)
  return stgram_mfn.STgramMFN(
    num_classes,
    n_mels=config.features.n_mels,
    frames=example_frames(config),
    win_length=config.features.n_fft,
    hop_length=config.features.hop_length,
    bottlenecks=config.model.bottlenecks,
    embedding=config.model.embedding,
    arcface_s=config.model.arcface_s,
    arcface_m=config.model.arcface_m,
    dtype=jnp.dtype(config.model.compute_dtype),
    rngs=rngs,
  )
