"""The 2023-style synthetic layout: sections, domains and attributes.

One section per type and set, whose clips come from a source and a target
domain that differ in one attribute, named in the files; a blind eval test
set and the official evaluator's ground truth (the package docstring shows the
folders).
"""

from aeasd_jax.synth import clips

# One machine per type and set; the eval machine is another one than the dev
# machine, as DCASE's eval types are: machine ids 0 and 1, the 2020 layout's
# first dev and eval ids. DCASE 2023 on tells them apart by type; with the
# same types here, the eval machine has a section of its own, as in DCASE 2022
# (dev sections 00-02, eval 03-05).
DEV_ID = 0
EVAL_ID = 1
SECTIONS = {'dev_data': 'section_00', 'eval_data': 'section_01'}
DOMAINS = ('source', 'target')
# Per type, the attribute that the target domain shifts: its key in the file
# names and its source and target values. The machine runs at value / source
# value times its design speed: a target fan hums a third higher, a target
# valve's clicks come 20% further apart and a target slider strokes a quarter
# faster, so that a model trained mostly on source clips meets a domain shift.
DOMAIN_SHIFTS = {
  'fan': ('vel', 6, 8),
  'valve': ('rate', 6, 5),
  'slider': ('spd', 4, 5),
}


def speed(machine_type, domain):
  """How fast a machine runs in `domain`, relative to its design."""
  _, *values = DOMAIN_SHIFTS[machine_type]
  return values[domain] / values[0]


def clip_name(machine_type, section, domain, split, label, index):
  """The file name of a labelled clip in the 2023 layout.

  `domain`, `split` and `label` index DOMAINS, ('train', 'test') and
  ('normal', 'anomaly').
  """
  key, *values = DOMAIN_SHIFTS[machine_type]
  return (
    f'{section}_{DOMAINS[domain]}_{clips.SPLITS[split]}_{clips.LABELS[label]}_'
    f'{index:04d}_{key}_{values[domain]}.wav'
  )


def _write_type(root, machine_type, seed, clips_per_id, n, sample_rate):
  """Writes one machine type in the 2023 layout, eval ground truth included."""
  write = clips.writer(seed, machine_type, n, sample_rate)
  key, *values = DOMAIN_SHIFTS[machine_type]
  # DCASE 2023 has 990 source and 10 target training clips per type, so that
  # the target domain must be learnt from a few.
  trains = (clips_per_id, max(2, clips_per_id // 8))
  tests = max(2, clips_per_id // 4)
  originals = [
    (domain, label, index)
    for domain in range(len(DOMAINS))
    for label in range(len(clips.LABELS))
    for index in range(tests)
  ]
  truth = {'data': [], 'domain': [], 'attributes': []}
  for subset, machine_id in (
    ('dev_data', DEV_ID),
    ('eval_data', EVAL_ID),
  ):
    folder = root / subset / 'raw' / machine_type
    section = SECTIONS[subset]
    labelled = [
      (domain, clips.TRAIN, 0, index)
      for domain, count in enumerate(trains)
      for index in range(count)
    ]
    if subset == 'dev_data':
      labelled += [
        (domain, clips.TEST, label, index) for domain, label, index in originals
      ]
    else:
      order = clips.stream(
        seed, machine_type, machine_id, clips.SHUFFLE
      ).permutation(len(originals))
      for number, pick in enumerate(order):
        domain, label, index = originals[pick]
        blind = f'{section}_{number:04d}.wav'
        write(
          folder / 'test' / blind,
          machine_id,
          clips.TEST,
          label,
          index,
          domain,
          speed(machine_type, domain),
        )
        original = clip_name(
          machine_type, section, domain, clips.TEST, label, index
        )
        truth['data'].append([blind, label])
        truth['domain'].append([blind, domain])
        # The evaluator adds the .wav back.
        truth['attributes'].append([blind, original.removesuffix('.wav')])
    # file_name is relative to the folder above the type's, as readers of
    # the official files expect (the baselines do not read them). The blind
    # eval test clips are left out: their attributes are the secret.
    attributes = [['file_name', 'd1p', 'd1v']]
    for domain, split, label, index in labelled:
      name = clip_name(machine_type, section, domain, split, label, index)
      write(
        folder / clips.SPLITS[split] / name,
        machine_id,
        split,
        label,
        index,
        domain,
        speed(machine_type, domain),
      )
      attributes.append(
        [
          f'{machine_type}/{clips.SPLITS[split]}/{name}',
          key,
          values[domain],
        ]
      )
    clips.write_csv(
      folder / f'attributes_{section.removeprefix("section_")}.csv',
      attributes,
    )
  for kind, rows in truth.items():
    clips.write_csv(
      root
      / 'ground_truth'
      / f'ground_truth_{kind}'
      / f'ground_truth_{machine_type}_{SECTIONS["eval_data"]}_test.csv',
      rows,
    )


def write(root, machine_types, seed, clips_per_id, n, sample_rate):
  for machine_type in machine_types:
    _write_type(root, machine_type, seed, clips_per_id, n, sample_rate)
