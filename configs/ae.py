"""The DCASE 2020 baseline autoencoder on 5-frame log-mel vectors (640 in, 640 out).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/ae.py
  python evaluate.py --workdir=runs/ae
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "ae"
  config.model.name = "AE"
  return config
