"""`python -m aeasd_jax.synth`: a synthetic data set from the command line.

The package docstring (aeasd_jax/synth/__init__.py) describes the layouts.
"""

import sys

from absl import app
from absl import flags

from aeasd_jax import synth
from aeasd_jax.errors import AeasdError


def _define_flags():
  """Defines the command-line flags.

  Only the script defines them: on import they would clash with same-named
  flags of any program that imports generate().
  """
  flags.DEFINE_string('out', None, 'Folder to create for the data set.')
  flags.DEFINE_integer(
    'year',
    2020,
    f'DCASE layout, one of {list(synth.YEARS)}: 2020 names clips by machine '
    'id, 2023 by section and source or target domain, with attributes.',
  )
  flags.DEFINE_integer('seed', 0, 'Random seed; same seed, same bytes.')
  flags.DEFINE_integer(
    'clips_per_id',
    synth.DEFAULT_CLIPS_PER_ID,
    'Normal training clips per machine id; the test sets get a quarter of '
    'it (at least 2) normal and as many anomalous clips.',
  )
  flags.DEFINE_float(
    'seconds', synth.DEFAULT_SECONDS, 'Clip length in seconds.'
  )
  flags.DEFINE_list(
    'machine_types', list(synth.MACHINE_TYPES), 'Machine types to generate.'
  )
  flags.mark_flag_as_required('out')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  values = flags.FLAGS
  try:
    root = synth.generate(
      values.out,
      year=values.year,
      seed=values.seed,
      clips_per_id=values.clips_per_id,
      seconds=values.seconds,
      machine_types=values.machine_types,
    )
  except AeasdError as err:
    sys.exit(f'error: {err}')
  print(root)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
