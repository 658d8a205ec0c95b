"""VIDNN: the VAE with IDNN's input (4 context frames) and target (the centre frame).

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/vidnn.py
  python evaluate.py --workdir=runs/vidnn

Expected on the bundled synthetic data (dev set, AUC % (pAUC %), seed 0,
measured 2026-11-25 on 2 CPU cores): fan 100.00 (100.00), slider 100.00 (100.00),
valve 90.74 (91.23), average 96.91 (97.08). Unlike the VAE, which trails the AE
there, predicting the centre frame keeps it level with IDNN.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "vidnn"
  config.model.name = "VIDNN"
  return config
