"""AE-ASD's VAE: three Dense-BN-ReLU heads (mu, logvar, z), no noise.

The decoder reads z * exp(logvar / 2) + mu; the loss is the MSE plus the KL
term summed over the whole batch (model.vae="aeasd", kl_reduction="sum").
Otherwise configs/aeasd_ae.py, whose docstring has the recipe, the dev AUC
selection that peeks at the test labels, and the synthetic-data batch.

  python train.py --config=configs/aeasd_vae.py \
    --config.data.root=/data/dcase2020 \
    --config.data.dev_dir=dataset --config.data.eval_dir=eval_dataset
  python evaluate.py --workdir=runs/aeasd_vae

AE-ASD reports dev AUC 66.43 % (pAUC 56.77 %) on average over the six
types, eval 69.56 % (56.94 %).
"""

from configs import aeasd_ae


def get_config():
  config = aeasd_ae.get_config()
  config.name = "aeasd_vae"
  config.model.name = "VAE"
  config.model.vae = "aeasd"
  return config
