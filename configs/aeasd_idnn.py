"""AE-ASD's IDNN: the centre frame from the 4 around it, AE-ASD's recipe.

Otherwise configs/aeasd_ae.py, whose docstring has the recipe, the dev AUC
selection that peeks at the test labels, and the synthetic-data batch.

  python train.py --config=configs/aeasd_idnn.py \
    --config.data.root=/data/dcase2020 \
    --config.data.dev_dir=dataset --config.data.eval_dir=eval_dataset
  python evaluate.py --workdir=runs/aeasd_idnn

AE-ASD reports dev AUC 75.44 % (pAUC 62.06 %) on average over the six
types, eval 79.09 % (61.45 %).
"""

from configs import aeasd_ae


def get_config():
  config = aeasd_ae.get_config()
  config.name = "aeasd_idnn"
  config.model.name = "IDNN"
  return config
