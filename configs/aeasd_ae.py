"""AE-ASD's AE (liuyoude/AE-ASD, PyTorch): the baseline network, its recipe.

What differs from configs/default.py (the Keras DCASE 2020 baseline):
torchaudio's log-mel (HTK mel scale, no filter normalisation, reflect
padding, 10*log10(max(mel, 1e-10))); torch.nn.Linear initialisation and
PyTorch's BatchNorm1d constants (momentum 0.1, i.e. Flax 0.9; eps 1e-5);
batch 128 clips x 309 vectors = 39,552; 300 epochs; no validation split:
every 5 epochs the dev test AUC picks the weights kept. That selection peeks
at the labelled test data, so its dev results are optimistic; the eval set's
are not.

  python train.py --config=configs/aeasd_ae.py \
    --config.data.root=/data/dcase2020 \
    --config.data.dev_dir=dataset --config.data.eval_dir=eval_dataset
  python evaluate.py --workdir=runs/aeasd_ae

(dev_dir and eval_dir take AE-ASD's folder names; leave them out for the
DCASE names dev_data and eval_data.) AE-ASD reports dev AUC 69.52 % (pAUC
58.73 %) on average over the six types, eval 72.78 % (58.53 %).

On the bundled synthetic data (2 s clips, about 7,080 training vectors per
type) a batch of 39,552 exceeds every group, which train.py refuses; pass a
smaller one:

  python train.py --config=configs/aeasd_ae.py --config.train.batch_size=1024

Expected there (dev set, AUC %, mean ± std over 3 seeds, 2026-11-27, 2 CPU
cores; optimistic, as the selection peeks at these test clips): fan 100.00 ±
0.00, slider 100.00 ± 0.00, valve 80.25 ± 0.44, average 93.42 ± 0.15. README.md
has the VAE and IDNN presets' rows.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = "aeasd_ae"
  config.model.name = "AE"
  # torchaudio.transforms.MelSpectrogram and AmplitudeToDB as AE-ASD calls
  # them; n_fft, hop, n_mels and power are the baseline's.
  config.features.htk = True
  config.features.norm = None
  config.features.pad_mode = "reflect"
  config.features.log_floor = 1e-10
  config.model.init = "torch"
  config.model.bn_momentum = 0.9  # PyTorch momentum 0.1.
  config.model.bn_epsilon = 1e-5
  config.model.kl_reduction = "sum"  # The VAE's KL over the whole batch.
  config.data.use_eval_train = True
  config.train.epochs = 300
  config.train.batch_size = 128 * 309
  config.train.learning_rate = 1e-3
  config.train.validation_split = 0.0
  config.train.select_by = "dev_auc"
  config.train.select_every = 5
  return config
