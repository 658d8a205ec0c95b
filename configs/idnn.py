"""IDNN (Suefusa et al., ICASSP 2020): the centre frame from the 4 around it.

Follows the DCASE 2020 baseline recipe (configs/default.py): Adam 1e-3,
100 epochs, batch 512 vectors, one model per type, the last weights kept
(validation split 0.1 for the loss curve only).

  python train.py --config=configs/idnn.py
  python evaluate.py --workdir=runs/idnn

Expected on the bundled synthetic data (dev set, AUC %, mean ± std over 3 seeds
with --config.train.num_seeds=3, measured 2026-12-03 on 2 CPU cores; README.md
has the full table): fan 99.38 ± 0.44, slider 100.00 ± 0.00, valve 92.59 ±
3.02, average 97.33 ± 1.14 (pAUC 96.10 ± 2.11).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "idnn"
  config.model.name = "IDNN"
  return config
