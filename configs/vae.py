"""The VAE: encoder, mean and log-variance heads, the AE decoder; MSE + KL.

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, one model per type, the last weights kept
(validation split 0.1 for the loss curve only).

  python train.py --config=configs/vae.py
  python evaluate.py --workdir=runs/vae

Expected on the bundled synthetic data (dev set, AUC %, mean ± std over 3 seeds
with --config.train.num_seeds=3, measured 2026-12-03 on 2 CPU cores; README.md
has the full table): fan 100.00 ± 0.00, slider 82.72 ± 3.57, valve 56.48 ±
2.27, average 79.73 ± 0.52 (pAUC 73.68 ± 1.38).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "vae"
  config.model.name = "VAE"
  return config
