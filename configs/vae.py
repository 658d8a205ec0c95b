"""The VAE: encoder, mean and log-variance heads, the AE decoder; MSE + KL.

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/vae.py
  python evaluate.py --workdir=runs/vae

Expected on the bundled synthetic data (dev set, AUC %, mean ± std over 3 seeds
with --config.train.num_seeds=3, measured 2026-11-27 on 2 CPU cores; README.md
has the full table): fan 100.00 ± 0.00, slider 80.56 ± 0.00, valve 55.56 ±
1.31, average 78.70 ± 0.44 (pAUC 71.73 ± 0.00).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "vae"
  config.model.name = "VAE"
  return config
