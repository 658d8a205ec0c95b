"""IDNN (Suefusa et al., ICASSP 2020): predicts the centre frame from the 4 frames around it.

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, validation split 0.1, one model per type.

  python train.py --config=configs/idnn.py
  python evaluate.py --workdir=runs/idnn

Expected on the bundled synthetic data (dev set, AUC % (pAUC %), seed 0,
measured 2026-11-25 on 2 CPU cores): fan 98.15 (94.15), slider 100.00 (100.00), valve 91.67 (91.23),
average 96.60 (95.13).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "idnn"
  config.model.name = "IDNN"
  return config
