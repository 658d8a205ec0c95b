"""The DCASE 2023-2026 official baseline's AE, on a 2023-style dataset.

    python train.py --config=configs/dcase2023.py
    python evaluate.py --workdir=runs/dcase2023 [--score=mahalanobis]

Without --config.data.root it trains on the bundled synthetic 2023-style
set: one section per type, many source-domain clips and a few target-domain
clips whose attribute is shifted. The README gives its table (official
score, AUC per domain and pAUC), mean ± std over 3 seeds.

The network is the 2020 baseline's AE, as in the official 2023+ baseline
(nttcslab/dcase2023_task2_baseline_ae): PyTorch layers (torch init),
BatchNorm1d(momentum=0.01, eps=1e-3), i.e. Flax momentum 0.99, batch 256,
Adam 1e-3, 100 epochs, the last weights (validation split 0.1 for the loss
curve only). With --score=mahalanobis, evaluate.py scores by the baseline's
selective Mahalanobis distance.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "dcase2023"
  config.data.dcase_year = 2023
  config.synth.year = 2023
  config.model.name = "AE"
  config.model.init = "torch"
  config.model.bn_momentum = 0.99
  config.model.bn_epsilon = 1e-3
  config.train.batch_size = 256
  return config
