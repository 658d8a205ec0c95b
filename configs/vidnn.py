"""VIDNN: the VAE with IDNN's input (4 context frames) and target (the centre frame).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/vidnn.py
  python evaluate.py --workdir=runs/vidnn

Expected on the bundled synthetic data: not measured yet; like VAE it trades
reconstruction quality for a smooth latent space.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "vidnn"
  config.model.name = "VIDNN"
  return config
