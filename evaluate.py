"""Evaluates a trained workdir: python evaluate.py --workdir=runs/idnn.

Writes DCASE-format score CSVs and result.csv, or with --wav scores any
recordings. Kept short on purpose; the logic is in aeasd_jax.evaluation.
"""

from absl import app
from absl import flags

from aeasd_jax.evaluation import evaluate
from aeasd_jax.evaluation import recordings
from aeasd_jax.training import run_identity
from aeasd_jax import runtime

flags.DEFINE(
  runtime.PathParser(folder=True),
  "workdir",
  None,
  "A run folder written by train.py.",
  required=True,
)
flags.DEFINE_string("checkpoint", "best", "best, latest or an epoch number.")
flags.DEFINE(
  runtime.PathParser(),
  "eval_ground_truth",
  None,
  "The eval set's ground truth: DCASE 2020's eval_data_list.csv, or from"
  " 2021 the evaluator's folder holding ground_truth_data/ (and"
  " ground_truth_domain/).",
)
flags.DEFINE_bool(
  "partial_ground_truth",
  False,
  "Score the eval set although --eval_ground_truth lists clips or machine"
  " types this run did not score (the official evaluators refuse that); the"
  " score is labelled PARTIAL.",
)
flags.DEFINE_bool(
  "plots",
  False,
  "Write ROC and histogram PNGs, or with --wav each recording's window"
  " errors and spectrogram (needs the [plot] extra).",
)
flags.DEFINE(
  runtime.PathParser(),
  "wav",
  None,
  "A file or folder of recordings to score instead of the DCASE test sets.",
)
flags.DEFINE_enum(
  "format",
  "text",
  ["text", "json"],
  "How --wav prints each recording: a tab-separated line (then a line per"
  " segment), or one JSON object per line.",
)
flags.DEFINE_string(
  "machine_type",
  None,
  "The machine type of --wav files (needed when the run trained several).",
)
flags.DEFINE(
  runtime.PathParser(folder=True),
  "data_root",
  None,
  "Where the run's dataset lies now, if it has moved; overrides the"
  " workdir's data.root for this evaluation only.",
)
flags.DEFINE(
  runtime.PathParser(folder=True),
  "cache_dir",
  None,
  "Where the feature cache is (or goes) now, e.g. for a workdir copied to"
  " another machine; overrides the workdir's data.cache_dir for this"
  " evaluation only.",
)
flags.DEFINE_enum(
  "score",
  None,
  ["mse", "mahalanobis", "logprob", "knn"],
  "The anomaly score, in place of the workdir's config.score.method."
  " Autoencoders: the reconstruction error (mse), or the 2023+ baseline's"
  " selective Mahalanobis distance. Classifiers: -log softmax of the clip's"
  " own class (logprob), or the cosine distance to the nearest training"
  " embedding of its class (knn). Statistics are fitted once per weights"
  " and stored.",
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  runtime.configure_logging()

  def run():
    config = run_identity.load_config(FLAGS.workdir, FLAGS.cache_dir)
    runtime.enable_compilation_cache(config)
    if FLAGS.wav:
      return recordings.score_recordings(
        FLAGS.workdir,
        FLAGS.wav,
        machine_type=FLAGS.machine_type,
        which=FLAGS.checkpoint,
        data_root=FLAGS.data_root,
        cache_dir=FLAGS.cache_dir,
        score_method=FLAGS.score,
        output=FLAGS.format,
        plots=FLAGS.plots,
      )
    return evaluate.evaluate(
      FLAGS.workdir,
      which=FLAGS.checkpoint,
      eval_ground_truth=FLAGS.eval_ground_truth,
      partial_ground_truth=FLAGS.partial_ground_truth,
      plots=FLAGS.plots,
      data_root=FLAGS.data_root,
      cache_dir=FLAGS.cache_dir,
      score_method=FLAGS.score,
    )

  runtime.run(run)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
