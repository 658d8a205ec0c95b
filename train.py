"""Trains AE, VAE or IDNN detectors: python train.py --config=configs/idnn.py.

Kept short on purpose; the logic is in aeasd_jax.train, where tests reach it.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from aeasd_jax import runtime
from aeasd_jax.training import train

# No default: a default config file would be loaded, with the overrides, at
# import time, before a bad override could be reported as one line.
config_flags.DEFINE_config_file(
  "config", None, "Training configuration file, e.g. configs/idnn.py."
)
flags.mark_flag_as_required("config")
flags.DEFINE(
  runtime.PathParser(folder=True),
  "workdir",
  None,
  "Run folder; default runs/<config.name>, or runs/<config.name>_<year>"
  " when --config.data.dcase_year is not the config file's own.",
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0, for multi-host training (see README).",
)
flags.DEFINE_integer(
  "num_processes",
  None,
  "Processes in a multi-host run; needs --coordinator_address.",
)
flags.DEFINE_integer(
  "process_id",
  None,
  "This process's index, 0 to num_processes - 1; needs --coordinator_address.",
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  runtime.configure_logging()
  config = FLAGS.config

  def run():
    runtime.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    runtime.enable_compilation_cache(config)
    workdir = FLAGS.workdir or runtime.default_workdir(
      config, FLAGS["config"].config_filename
    )
    return train.train_and_evaluate(config, workdir)

  runtime.run(run)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
