"""aeasd_jax: autoencoder-based anomalous sound detection in JAX/Flax NNX."""

__version__ = "0.1.0"
