"""The DCASE 2020 baseline autoencoder on 5-frame log-mel vectors (640 in, 640 out).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/ae.py
  python evaluate.py --workdir=runs/ae

Expected on the bundled synthetic data (dev set, AUC % (pAUC %), seed 0,
measured 2026-11-25 on 2 CPU cores): fan 98.15 (94.15), slider 100.00 (100.00), valve 74.07 (76.61),
average 90.74 (90.25).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "ae"
  config.model.name = "AE"
  return config
