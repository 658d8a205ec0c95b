"""Settings shared by every detector; model configs change only what differs.

Follows the DCASE 2020 Task 2 baseline: 5-frame log-mel vectors (128 mels,
n_fft 1024, hop 512), Adam 1e-3, 100 epochs, batch 512, validation split 0.1,
training on dev train plus the additional (eval) train data when present.
"""

import ml_collections
from ml_collections import config_dict

from aeasd_jax import synth


def get_config():
  config = ml_collections.ConfigDict()
  config.name = "ae"  # The default workdir is runs/<name>.
  config.seed = 0
  # JAX's persistent compilation cache: empty for <cache_dir>/jax, "off" to
  # disable. A second identical run then skips compilation.
  config.compile_cache_dir = ""
  # A run locks its workdir and refreshes the lock every quarter of this; a
  # lock from another host that is older than this many seconds is taken
  # over (on the same host a dead holder is seen at once).
  config.workdir_lock_stale_s = 60.0

  config.data = ml_collections.ConfigDict()
  # Empty: the bundled synthetic dataset (generated once under cache_dir).
  config.data.root = ""
  config.data.dev_dir = "dev_data"  # AE-ASD: "dataset".
  config.data.eval_dir = "eval_data"  # AE-ASD: "eval_dataset".
  config.data.machine_types = ()  # Empty: every type folder under dev_dir.
  config.data.use_eval_train = True  # DCASE's additional training data.
  # The DCASE Task 2 year (2020-2026) whose file names, result files and
  # official score apply; None tells it from the dev training clips' names:
  # 2020 (ids), 2021 (source_test/ and target_test/ folders) or 2022, which
  # stands for 2022-2026: they name and score clips alike.
  config.data.dcase_year = config_dict.placeholder(int)
  # Of multi-channel clips: "mean", or a channel index such as "0". Empty:
  # the year's baseline's choice, channel 0 of 2026's near and far
  # microphones, else the mean.
  config.data.channel = ""
  # DCASE 2025 on: each type's supplemental/ clips, which the official
  # baseline leaves out, are training clips too.
  config.data.use_supplemental = False
  # One model per group: "type" (as the baselines; a type's sections and
  # domains share it) or "type_section" (per section; per id in 2020, whose
  # name for it, "type_id", is accepted too).
  config.data.group_by = "type"
  # Empty: $XDG_CACHE_HOME/aeasd_jax (or ~/.cache/aeasd_jax).
  config.data.cache_dir = ""
  config.data.resample = False  # Resample other rates instead of refusing.
  config.data.skip_bad_files = False  # Leave bad files out, with a report.
  # None: keep the training frames on the devices when they fit in half the
  # free device memory, else stream them; True or False forces the choice.
  config.data.device_resident = config_dict.placeholder(bool)
  config.data.stream_chunk_clips = 256  # Clips per group per streamed chunk.
  config.data.decode_workers = 8
  config.data.feature_batch = 64  # Clips per log-mel call while caching.
  # Audio seconds per log-mel call (64 clips of 10 s), which bounds its
  # memory: longer clips go in calls of fewer clips, at least one.
  config.data.feature_batch_seconds = 640.0
  # Classifiers' clip examples: every clip tiled (repeated) or cut to this
  # many seconds before its log-mel, as ASDKit; STgram-MFN keeps the first
  # 10 s. None keeps clips whole (the autoencoders' windows need no more).
  config.data.clip_seconds = config_dict.placeholder(float)
  # Classifiers' classes: "section", one per machine type and id (2020) or
  # section (2021+), over every type's training clips.
  config.data.labels = "section"

  # The bundled dataset, used when data.root is empty (aeasd_jax/synth/).
  config.synth = ml_collections.ConfigDict()
  # 2020: machine ids; 2023: sections, with a few target-domain clips whose
  # attribute is shifted (python -m aeasd_jax.synth --help).
  config.synth.year = 2020
  config.synth.seed = 0
  config.synth.clips_per_id = synth.DEFAULT_CLIPS_PER_ID
  config.synth.seconds = synth.DEFAULT_SECONDS

  # features.log_mel arguments; the defaults are the DCASE baseline's.
  config.features = ml_collections.ConfigDict()
  config.features.sample_rate = 16000
  config.features.n_fft = 1024
  config.features.hop_length = 512
  config.features.n_mels = 128
  config.features.power = 2.0
  config.features.htk = False  # AE-ASD (torchaudio): True.
  config.features.norm = "slaney"  # AE-ASD (torchaudio): None.
  config.features.pad_mode = "constant"  # librosa < 0.10 and AE-ASD: reflect.
  # None: 20/power*log10(mel + eps) as the baseline; AE-ASD: 1e-10 floor.
  config.features.log_floor = config_dict.placeholder(float)
  config.features.fmin = 0.0
  config.features.fmax = config_dict.placeholder(float)  # None: sr / 2.

  config.model = ml_collections.ConfigDict()
  # AE, VAE, IDNN, VIDNN (autoencoders) or STgramMFN (a classifier);
  # models/registry.py.
  config.model.name = "AE"
  config.model.frames = 5
  config.model.n_mels = config.features.get_ref("n_mels")
  config.model.hidden = 128
  config.model.depth = 4
  config.model.bottleneck = 8
  # Keras' BatchNormalization defaults, as the baseline trained with. Flax
  # keeps `momentum` of the running average where PyTorch's momentum m is
  # the weight of the new batch: Flax 1 - m. PyTorch's defaults (AE-ASD):
  # momentum 0.1 -> bn_momentum 0.9, eps 1e-5.
  config.model.bn_momentum = 0.99
  config.model.bn_epsilon = 1e-3
  # Dense initialisation: "keras" (glorot-uniform kernels, zero biases) as
  # the baseline; "torch" (torch.nn.Linear: kernel and bias
  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))) as AE-ASD.
  config.model.init = "keras"
  # VAE and VIDNN: "reparameterised" (linear mean and log-variance heads,
  # sampled z) or "aeasd" (AE-ASD's three Dense-BN-ReLU heads and no noise;
  # use kl_reduction "sum" as AE-ASD). AE and IDNN ignore it.
  config.model.vae = "reparameterised"
  # "bfloat16": hidden matmuls in bfloat16, parameters, BatchNorm statistics,
  # the output layer and the loss in float32. See benchmarks/NOTES.md for its
  # measured quality before using it. "float64": everything in float64, for
  # equivalence tests; needs JAX_ENABLE_X64=1.
  config.model.compute_dtype = "float32"
  config.model.beta = 1.0  # KL weight (VAE, VIDNN).
  config.model.kl_reduction = "mean"  # "sum" over the batch as AE-ASD.
  # STgram-MFN: MobileFaceNet's bottleneck table ("mobilefacenet", the
  # paper's, or "liu2022", the reference's latest), the embedding's width
  # and ArcFace's scale and margin (models/stgram_mfn.py).
  config.model.bottlenecks = "mobilefacenet"
  config.model.embedding = 128
  config.model.arcface_s = 30.0
  config.model.arcface_m = 0.7

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 100
  config.train.batch_size = 512
  config.train.learning_rate = 1e-3
  config.train.adam_eps = 1e-8  # optax's default; Keras used 1e-7.
  # "constant", or "cosine" as STgram-MFN: after each epoch from
  # cosine_start_epoch on (counted from 0), one step of a cosine annealing
  # over train.epochs steps down to cosine_final times the rate.
  config.train.lr_schedule = "constant"
  config.train.cosine_start_epoch = 20
  config.train.cosine_final = 0.1
  config.train.num_seeds = 1  # Independent models per group.
  config.train.validation_split = 0.1
  # Which weights "best" names: "last" (the DCASE baselines: the final
  # weights; held-out clips only give the validation loss curve), "val_loss"
  # (the lowest validation loss), or "dev_auc" as AE-ASD, which peeks at
  # labelled test data.
  config.train.select_by = "last"
  config.train.select_every = 5  # Epochs between dev AUC checks (dev_auc).
  config.train.checkpoint_every = 10  # Epochs; the last epoch always saves.
  config.train.keep_checkpoints = 3
  config.train.log_every = 1  # Epochs between progress lines.
  config.train.tensorboard = False  # Needs the [tensorboard] extra.
  # The training step's kernels: "xla" (autodiff, XLA's fusions), "jax_fused"
  # (AE and IDNN: a custom-VJP Dense+BatchNorm+ReLU and a flat, masked Adam;
  # aeasd_jax/training/fused.py), "pallas" (the same step with each block as
  # Pallas kernels, aeasd_jax/training/fused_pallas.py: one NVIDIA GPU, a
  # batch_size that is a multiple of 16, jax 0.10.2 to 0.12) or "auto", which
  # picks "xla" until a faster path is measured (benchmarks/RESULTS.md).
  config.train.kernels = "auto"
  # Runs "pallas" in Pallas' interpret mode, on any backend: for tests, slow.
  config.train.pallas_interpret = False

  config.score = ml_collections.ConfigDict()
  # Autoencoders: "mse", or "mahalanobis": the 2023+ baseline's selective
  # Mahalanobis distance of the residual, the smaller of its source and
  # target ones. Classifiers: "logprob" (-log softmax of the clip's own
  # class, the margin applied as STgram-MFN scores) or "knn" (the cosine
  # distance to the nearest training embedding of the clip's class).
  # evaluate.py --score picks one for one evaluation.
  config.score.method = "mse"
  config.score.pooling = "mean"  # "mean", "max" or "gwrp" (AE-ASD's option).
  config.score.gwrp_decay = 0.99
  config.score.threshold_percentile = 90.0  # Of a gamma fit to normal scores.
  # evaluate.py --wav: a window stands out above this percentile of a gamma
  # fit to the highest window error of each held-out normal clip, so about
  # 1 normal clip in 100 shows a segment (aeasd_jax/scoring/windows.py).
  config.score.segment_percentile = 99.0
  config.score.segment_bands = 3  # Mel bands named per segment.
  config.score.batch_windows = 8192  # Windows per model per scoring step.
  config.score.batch_clips = 32  # Clips per model per step (classifiers).
  return config
