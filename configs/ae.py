"""The DCASE 2020 baseline autoencoder on 5-frame log-mel vectors (640 in, out).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/ae.py
  python evaluate.py --workdir=runs/ae

Expected on the bundled synthetic data (dev set, AUC %, mean ± std over 3 seeds
with --config.train.num_seeds=3, measured 2026-11-27 on 2 CPU cores; README.md
has the full table): fan 99.69 ± 0.44, slider 100.00 ± 0.00, valve 69.14 ±
0.87, average 89.61 ± 0.15 (pAUC 90.90 ± 0.46).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "ae"
  config.model.name = "AE"
  return config
