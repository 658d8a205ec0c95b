"""What the benchmark scripts share: argument checks and each run's header.

The header names the device, versions, date and command behind every number.
"""

import argparse
import datetime
import os
import platform
import shlex
import sys

import flax
import jax
import jaxlib
import numpy as np
import optax


def positive_int(text):
  """An argparse type: a whole number of at least 1."""
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
  return value


def header(**versions):
  """The device, library versions, date and command line of this run.

  Args:
    **versions: more name=version entries, such as torch's.
  """
  device = jax.local_devices()[0]
  return {
      "device_kind": device.device_kind, "platform": device.platform,
      "device_count": jax.device_count(), "host_cpus": os.cpu_count(),
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "flax": flax.__version__, "optax": optax.__version__,
                   "numpy": np.__version__,
                   "python": platform.python_version(), **versions},
      # The command-buffer and other XLA levers are set through this.
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "command": shlex.join([sys.executable] + sys.argv),
  }
