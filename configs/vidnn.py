"""VIDNN: the VAE with IDNN's input (4 context frames) and target (centre).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, one model per type, the last weights kept
(validation split 0.1 for the loss curve only).

  python train.py --config=configs/vidnn.py
  python evaluate.py --workdir=runs/vidnn

Expected on the bundled synthetic data (dev set, AUC %, mean ± std over 3 seeds
with --config.train.num_seeds=3, measured 2026-12-03 on 2 CPU cores; README.md
has the full table): fan 100.00 ± 0.00, slider 100.00 ± 0.00, valve 90.43 ±
0.44, average 96.81 ± 0.15 (pAUC 97.73 ± 0.46). Unlike the VAE, which trails
the AE there, predicting the centre frame keeps it level with IDNN.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "vidnn"
  config.model.name = "VIDNN"
  return config
