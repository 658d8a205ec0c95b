"""`python -m aeasd_jax.synth`: a synthetic data set from the command line.

The package docstring (aeasd_jax/synth/__init__.py) describes the layouts.
"""

from absl import app
from absl import flags

from aeasd_jax import runtime
from aeasd_jax import synth
from aeasd_jax.errors import AeasdError

# generate()'s defaults, against which each flag's value is checked alone.
_DEFAULTS = dict(
  year=2020,
  seed=0,
  clips_per_id=synth.DEFAULT_CLIPS_PER_ID,
  seconds=synth.DEFAULT_SECONDS,
  sample_rate=synth.DEFAULT_SAMPLE_RATE,
  machine_types=synth.MACHINE_TYPES,
)


def _define_flags():
  """Defines the command-line flags.

  Only the script defines them: on import they would clash with same-named
  flags of any program that imports generate().
  """
  flags.DEFINE(
    runtime.PathParser(folder=True),
    'out',
    None,
    'Folder to create for the data set.',
  )
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
  for name in ('year', 'seed', 'clips_per_id', 'seconds', 'machine_types'):
    flags.register_validator(name, _checker(name))


def _checker(name):
  """A flag validator: generate()'s own check of that one argument.

  So a bad value is refused as the flags are parsed, in a line that names
  the flag, by the same rule generate() applies.
  """

  def check(value):
    try:
      synth._check(**{**_DEFAULTS, name: value})  # pylint: disable=protected-access
    except AeasdError as e:
      raise flags.ValidationError(str(e)) from None
    return True

  return check


def main(argv):
  del argv  # runtime.parse_flags refuses arguments that are not flags.
  values = flags.FLAGS

  def generate():
    print(
      synth.generate(
        values.out,
        year=values.year,
        seed=values.seed,
        clips_per_id=values.clips_per_id,
        seconds=values.seconds,
        machine_types=values.machine_types,
      )
    )

  runtime.run(generate)


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=runtime.parse_flags)
