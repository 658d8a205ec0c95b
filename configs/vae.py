"""AE-ASD's VAE: encoder, mean and log-variance heads (8), the AE decoder; MSE + beta*KL.

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/vae.py
  python evaluate.py --workdir=runs/vae

Expected on the bundled synthetic data (dev set, AUC % (pAUC %), seed 0,
measured 2026-11-25 on 2 CPU cores): fan 100.00 (100.00), slider 82.41 (67.84), valve 57.41 (50.29),
average 79.94 (72.71).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "vae"
  config.model.name = "VAE"
  return config
