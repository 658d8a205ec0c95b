"""The DCASE 2020 baseline autoencoder on 5-frame log-mel vectors (640 in, out).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, one model per type, the last weights kept
(validation split 0.1 for the loss curve only).

  python train.py --config=configs/ae.py
  python evaluate.py --workdir=runs/ae

Expected on the bundled synthetic data (dev set, AUC %, mean ± std over 3 seeds
with --config.train.num_seeds=3, measured 2026-12-03 on 2 CPU cores; README.md
has the full table): fan 99.07 ± 0.00, slider 99.69 ± 0.44, valve 68.21 ±
3.81, average 88.99 ± 1.29 (pAUC 90.25 ± 0.80).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "ae"
  config.model.name = "AE"
  return config
