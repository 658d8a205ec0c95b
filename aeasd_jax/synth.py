"""Deterministic synthetic machine sounds in the DCASE 2020 Task 2 layout.

Run as `python -m aeasd_jax.synth --out=DIR` to get a small data set for tests.
"""

import errno
import io
import pathlib
import shutil
import sys
import uuid
import zlib

from absl import app
from absl import flags
import numpy as np
import soundfile

from aeasd_jax.errors import AeasdError

# Even ids go to the development set and odd ids to the evaluation set, as in
# DCASE 2020 where fan has dev ids 00/02/04/06 and eval ids 01/03/05.
DEV_IDS = (0, 2, 4)
EVAL_IDS = (1, 3)
# 2 s clips give 63 centred frames, i.e. 59 five-frame vectors; 24 clips per
# id over 5 ids give 7,080 training vectors per type, so that generating the
# set, training 100 baseline epochs and evaluating take about 2 minutes on
# two CPU cores.
DEFAULT_CLIPS_PER_ID = 24
DEFAULT_SECONDS = 2.0
DEFAULT_SAMPLE_RATE = 16000

# MIMII mixed in factory noise at 6, 0 and -6 dB SNR; these are milder so
# that a small model trained on a few thousand vectors still separates the
# classes.
_SNRS_DB = (12.0, 6.0, 0.0)
# Every clip peaks at -6 dBFS, far enough from full scale that rounding to
# 16 bits cannot clip.
_PEAK = 0.5
_MIN_SECONDS = 0.5
# A random stream's key after the machine id: a clip's split, or the shuffle
# of the eval test files.
_TRAIN, _TEST, _SHUFFLE = range(3)


class OutDirExistsError(AeasdError, FileExistsError):
  """The output folder holds something, perhaps another run's data set.

  A FileExistsError too, so that callers racing to create the same data set
  can tell that another one won.
  """


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


def _coloured_noise(rng, n, sample_rate, exponent):
  """Unit-RMS Gaussian noise whose power density falls as f**-exponent."""
  freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
  # Flat below 20 Hz so the slope does not blow up at DC.
  gain = np.maximum(freqs, 20.0)**(-exponent / 2.0)
  spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(
      freqs.size)
  x = np.fft.irfft(spectrum * gain, n)
  return x / _rms(x)


def _shaped_noise(rng, magnitude, hop):
  """Noise whose short-time magnitude spectrum follows `magnitude`.

  Args:
    rng: the random generator.
    magnitude: [bins, frames] target magnitudes, bins = size // 2 + 1.
    hop: hop between grains in samples; must divide the grain size.

  Returns:
    The overlap-added signal, (frames - 1) * hop + size samples long.
  """
  bins, frames = magnitude.shape
  size = 2 * (bins - 1)
  spectrum = magnitude * (rng.standard_normal(magnitude.shape) +
                          1j * rng.standard_normal(magnitude.shape))
  grains = np.fft.irfft(spectrum, size, axis=0) * np.hanning(size)[:, None]
  out = np.zeros((frames - 1) * hop + size)
  # Grain j lands at j * hop; slicing each grain into hop-long pieces turns the
  # overlap-add into size // hop contiguous additions.
  for i in range(size // hop):
    out[i * hop:i * hop + frames * hop] += (
        grains[i * hop:(i + 1) * hop].T.reshape(-1))
  return out


def _partials(phase, orders, amplitudes, rng):
  """Sum of sinusoids at `orders` (multiples of 1/2) of the running `phase`."""
  # A wavetable two cycles long, built by one inverse FFT, costs one
  # interpolation per sample instead of one sine per partial and sample.
  size = 8192
  spectrum = np.zeros(size // 2 + 1, complex)
  offsets = rng.uniform(0.0, 2.0 * np.pi, len(orders))
  spectrum[np.round(2 * orders).astype(int)] = (
      size / 2 * amplitudes * np.exp(1j * (offsets - np.pi / 2)))
  table = np.fft.irfft(spectrum, size)
  grid = np.linspace(0.0, 4.0 * np.pi, size, endpoint=False)
  return np.interp(phase, grid, table, period=4.0 * np.pi)


_BLADES = 6


def _fan(rng, n, sample_rate, machine_id, anomaly):
  """Blade-pass hum with harmonics over pink aerodynamic noise.

  Anomalies are all off the normal manifold of a log-mel autoencoder: tones
  that are not harmonics of the blade pass ('bearing'), half-order harmonics
  of a loose mount ('looseness') and an unbalanced rotor ('unbalance'), which
  modulates the hum once per revolution, with sidebands between the
  harmonics, and rocks the housing, so that the level swells from frame to
  frame.
  """
  t = np.arange(n) / sample_rate
  f0 = 140.0 * 1.12**machine_id * rng.uniform(0.998, 1.002)
  drift = 1.0 + 0.002 * np.sin(2.0 * np.pi * rng.uniform(0.1, 0.5) * t +
                               rng.uniform(0.0, 2.0 * np.pi))
  phase = 2.0 * np.pi * f0 * np.cumsum(drift) / sample_rate
  orders = np.arange(1, int(4000.0 // f0) + 1)
  amplitudes = orders**-0.8
  hum = _partials(phase, orders, amplitudes, rng)
  broadband = 0.5 * _rms(hum) * _coloured_noise(rng, n, sample_rate, 1.0)
  scale = _rms(hum + broadband)
  if anomaly == 'bearing':
    freqs = rng.uniform(1500.0, 5000.0, 3)[:, None]
    offsets = rng.uniform(0.0, 2.0 * np.pi, 3)[:, None]
    hum = hum + 0.3 * np.sin(2.0 * np.pi * freqs * t + offsets).sum(axis=0)
  elif anomaly == 'looseness':
    hum = hum + _partials(phase, orders - 0.5, 0.6 * amplitudes, rng)
  elif anomaly == 'unbalance':
    # The rotor turns once per _BLADES blade passes.
    per_turn = np.sin(phase / _BLADES + rng.uniform(0.0, 2.0 * np.pi))
    rocking = np.sin(2.0 * np.pi * rng.uniform(2.0, 5.0) * t +
                     rng.uniform(0.0, 2.0 * np.pi))
    hum = hum * (1.0 + rng.uniform(0.5, 0.8) * per_turn) * (
        1.0 + rng.uniform(0.5, 0.8) * rocking)
  return (hum + broadband) / scale


def _click(sample_rate, machine_id, rng):
  """One valve click: a noisy attack exciting three id-specific modes."""
  t = np.arange(int(0.03 * sample_rate)) / sample_rate
  base = 900.0 * 1.12**machine_id
  modes = np.array([1.0, 2.3, 4.1])[:, None] * base
  decays = np.array([4e-3, 2.5e-3, 1.5e-3])[:, None]
  weights = np.array([1.0, 0.6, 0.35])
  ringing = weights @ (np.exp(-t / decays) * np.sin(2.0 * np.pi * modes * t))
  attack = rng.standard_normal(t.size) * np.exp(-t / 7e-4)
  return ringing + attack


def _valve(rng, n, sample_rate, machine_id, anomaly):
  """A solenoid valve clicking at an id-specific period over a faint hiss.

  Both anomalies move clicks but keep their number and shape, so the
  long-term spectrum stays that of a normal clip: 'jitter' makes the timing
  irregular and 'stutter' skips beats and fires the missing click 20-40 ms
  after the previous one.

  The periods, 130-170 ms or 4.1-5.3 hops of 32 ms, are chosen so that the
  IDNN beats the AE for a physical reason. A 5-frame vector spans about 6 hops
  (the windows overlap), so it mostly holds a single click: after a timing
  fault every vector still looks normal, a click somewhere or nearly nothing,
  and an autoencoder, which only has to redraw what it is shown, redraws it
  well. But the period is shorter than the span of the 4 context frames, so
  in a normal clip they decide the centre: quiet neighbours mean a click in
  the middle, a click among them means none. The IDNN, which never sees the
  centre, has to learn that rule, and stretched intervals (a quiet centre
  between quiet neighbours) and squeezed ones or double clicks (a click next
  to a click) break it.
  """
  period = (0.130 + 0.010 * machine_id) * rng.uniform(0.99, 1.01)
  count = int(n / sample_rate / period) + 3
  grid = (rng.uniform(-1.0, 0.0) + np.arange(count)) * period
  if anomaly == 'jitter':
    times = grid + rng.uniform(-0.45, 0.45, count) * period
  else:
    times = grid + rng.normal(0.0, 0.01, count) * period
  if anomaly == 'stutter':
    moved = rng.random(count) < 0.5
    moved[0] = False
    # Only isolated beats move, so every moved click has a regular predecessor.
    moved[1:] &= ~moved[:-1]
    gaps = rng.uniform(0.02, 0.04, count)
    times[moved] = times[np.flatnonzero(moved) - 1] + gaps[moved]
  train = np.zeros(n)
  starts = np.round(times * sample_rate).astype(int)
  inside = (starts >= 0) & (starts < n)
  train[starts[inside]] = 1.0 + 0.05 * rng.standard_normal(inside.sum())
  from scipy import signal  # pylint: disable=g-import-not-at-top  # Slow import.
  clicks = signal.fftconvolve(train, _click(sample_rate, machine_id, rng))[:n]
  hiss = 0.02 * _coloured_noise(rng, n, sample_rate, 0.5)
  return (clicks + hiss * _rms(clicks)) / _rms(clicks)


def _slider(rng, n, sample_rate, machine_id, anomaly):
  """A carriage sliding to and fro, with a thump at each end stop.

  Friction noise has a band that follows the position and a motor whine has
  a pitch that follows the speed.

  'short_stroke' halts every stroke early with a knock, as if the rail were
  blocked; 'scrape' adds harsh 3-6 kHz noise with a rough envelope while the
  carriage moves.
  """
  hop = 128
  size = 512
  period = 0.40 + 0.05 * machine_id
  stroke = 0.65 * period
  frames = n // hop + size // hop
  # Friction noise is synthesised on a grain grid, the whine per sample.
  for_grains = (np.arange(frames) * hop - size // 2) / sample_rate
  t = np.arange(n) / sample_rate
  start = -rng.uniform(0.0, period)
  stop_at = rng.uniform(0.4, 0.6) if anomaly == 'short_stroke' else 1.0

  def motion(times):
    cycle = np.floor((times - start) / period)
    u = ((times - start) - cycle * period) / stroke
    moving = u < stop_at
    travelled = 0.5 - 0.5 * np.cos(np.pi * np.minimum(u, stop_at))
    reach = 0.5 - 0.5 * np.cos(np.pi * stop_at)
    # Every other stroke runs back from wherever the last one stopped.
    position = np.where(cycle % 2 == 0, travelled, reach - travelled)
    speed = np.where(moving, np.sin(np.pi * np.minimum(u, 1.0)), 0.0)
    return position, speed

  position, speed = motion(for_grains)
  freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
  low = 400.0 * 1.1**machine_id
  centre = low * 4.0**position
  band = np.exp(-0.5 * (np.log(np.maximum(freqs, 1.0)[:, None] / centre) /
                        0.25)**2)
  magnitude = speed * band
  if anomaly == 'scrape':
    harsh = (freqs[:, None] > 3000.0) & (freqs[:, None] < 6000.0)
    roughness = rng.gamma(0.5, 2.0, frames)
    magnitude = magnitude + 0.4 * harsh * speed * roughness
  friction = _shaped_noise(rng, magnitude, hop)[size // 2:size // 2 + n]

  _, speed = motion(t)
  pitch = 600.0 * 1.1**machine_id * (0.5 + 0.5 * speed)
  whine = speed * np.sin(2.0 * np.pi * np.cumsum(pitch) / sample_rate)

  # A thump wherever a stroke ends, i.e. where the speed drops to zero.
  ends = np.flatnonzero((speed[:-1] > 0.0) & (speed[1:] == 0.0)) + 1
  pulses = np.zeros(n)
  pulses[ends] = 1.0
  k = np.arange(int(0.06 * sample_rate)) / sample_rate
  thump = np.exp(-k / 0.015) * np.sin(2.0 * np.pi * 180.0 * k)
  if anomaly == 'short_stroke':
    # Halting at full speed is a metallic knock, not a damped end stop.
    thump += 2.0 * np.exp(-k / 0.02) * (np.sin(2.0 * np.pi * 1300.0 * k) +
                                        np.sin(2.0 * np.pi * 2900.0 * k))
  from scipy import signal  # pylint: disable=g-import-not-at-top  # Slow import.
  thumps = signal.fftconvolve(pulses, thump)[:n]
  machine = friction / _rms(friction) + 0.3 * whine + 1.5 * thumps
  return machine / _rms(machine)


_SYNTHS = {'fan': _fan, 'valve': _valve, 'slider': _slider}
_ANOMALIES = {
    'fan': ('bearing', 'looseness', 'unbalance'),
    'valve': ('jitter', 'stutter'),
    'slider': ('short_stroke', 'scrape'),
}
MACHINE_TYPES = tuple(_SYNTHS)


def _stream(seed, machine_type, machine_id, *key):
  """A random generator of its own for every clip and every shuffle."""
  # A clip thus does not depend on how many others are generated, and the
  # CRC, unlike hash(), is the same in every process.
  return np.random.default_rng(
      [seed, zlib.crc32(machine_type.encode()), machine_id, *key])


def _clip(seed, machine_type, machine_id, split, label, index, n, sample_rate):
  """The int16 samples of one clip; the arguments are its whole identity."""
  rng = _stream(seed, machine_type, machine_id, split, label, index)
  kinds = _ANOMALIES[machine_type]
  anomaly = kinds[index % len(kinds)] if label else None
  machine = _SYNTHS[machine_type](rng, n, sample_rate, machine_id, anomaly)
  snr = _SNRS_DB[rng.integers(len(_SNRS_DB))]
  background = _coloured_noise(rng, n, sample_rate, rng.uniform(0.8, 1.6))
  # Distant activity makes the room level drift slowly.
  t = np.arange(n) / sample_rate
  background *= 1.0 + 0.2 * np.sin(2.0 * np.pi * rng.uniform(0.1, 0.5) * t +
                                   rng.uniform(0.0, 2.0 * np.pi))
  mix = machine + 10.0**(-snr / 20.0) * background
  mix *= _PEAK / np.max(np.abs(mix))
  return np.round(mix * 32767.0).astype(np.int16)


def _check(seed, clips_per_id, seconds, sample_rate, machine_types):
  if seed < 0:
    raise AeasdError(f'seed must be >= 0, got {seed}')
  if clips_per_id < 1:
    raise AeasdError(f'clips_per_id must be >= 1, got {clips_per_id}')
  if seconds < _MIN_SECONDS:
    raise AeasdError(
        f'seconds must be >= {_MIN_SECONDS} so that a clip holds several '
        f'clicks and strokes, got {seconds}')
  # Scrape noise and valve modes reach 6 kHz, below the Nyquist frequency of
  # DCASE's 16 kHz with room to spare.
  if sample_rate < 16000:
    raise AeasdError(f'sample_rate must be >= 16000, got {sample_rate}')
  unknown = sorted(set(machine_types) - set(MACHINE_TYPES))
  if unknown or not machine_types:
    raise AeasdError(f'machine_types must be a non-empty subset of '
                     f'{list(MACHINE_TYPES)}, got {list(machine_types)}')


def _write_type(root, machine_type, seed, clips_per_id, n, sample_rate):
  """Writes one machine type and returns its eval_data_list.csv rows."""
  tests = max(2, clips_per_id // 4)

  def write(path, machine_id, split, label, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = _clip(seed, machine_type, machine_id, split, label, index, n,
                    sample_rate)
    # Encoding in memory skips the fsync that soundfile does on closing a
    # file, which would otherwise take most of the run.
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format='WAV',
                    subtype='PCM_16')
    path.write_bytes(buffer.getvalue())

  dev = root / 'dev_data' / machine_type
  for machine_id in DEV_IDS:
    for index in range(clips_per_id):
      write(dev / 'train' / f'normal_id_{machine_id:02d}_{index:08d}.wav',
            machine_id, _TRAIN, 0, index)
    for label, name in enumerate(('normal', 'anomaly')):
      for index in range(tests):
        write(dev / 'test' / f'{name}_id_{machine_id:02d}_{index:08d}.wav',
              machine_id, _TEST, label, index)

  rows = [[machine_type]]
  ev = root / 'eval_data' / machine_type
  for machine_id in EVAL_IDS:
    for index in range(clips_per_id):
      write(ev / 'train' / f'normal_id_{machine_id:02d}_{index:08d}.wav',
            machine_id, _TRAIN, 0, index)
    originals = [(label, index) for label in (0, 1) for index in range(tests)]
    order = _stream(seed, machine_type, machine_id,
                    _SHUFFLE).permutation(len(originals))
    for number, pick in enumerate(order):
      label, index = originals[pick]
      name = f'id_{machine_id:02d}_{number:08d}.wav'
      original = (f'{("normal", "anomaly")[label]}_id_{machine_id:02d}_'
                  f'{index:08d}.wav')
      write(ev / 'test' / name, machine_id, _TEST, label, index)
      rows.append([name, original, str(label)])
  return rows


def generate(out_dir,
             *,
             seed=0,
             clips_per_id=DEFAULT_CLIPS_PER_ID,
             seconds=DEFAULT_SECONDS,
             sample_rate=DEFAULT_SAMPLE_RATE,
             machine_types=None):
  """Writes a synthetic DCASE 2020 Task 2 data set and returns its root.

  The root gets dev_data/<type>/{train,test}, eval_data/<type>/{train,test}
  and eval_data_list.csv. The same arguments give byte-identical files.

  Args:
    out_dir: the root to create; it must not exist or be an empty folder.
    seed: any integer >= 0.
    clips_per_id: normal training clips per machine id; the test sets get
      max(2, clips_per_id // 4) normal and as many anomalous clips per id.
    seconds: clip length.
    sample_rate: in Hz, at least 16000.
    machine_types: a subset of MACHINE_TYPES; None means all.

  Returns:
    The root as a pathlib.Path.

  Raises:
    OutDirExistsError: out_dir holds something, also when another process
      filled it while this one was writing.
    AeasdError: for a bad argument.
  """
  machine_types = tuple(MACHINE_TYPES if machine_types is None else
                        machine_types)
  _check(seed, clips_per_id, seconds, sample_rate, machine_types)
  out_dir = pathlib.Path(out_dir)
  taken = OutDirExistsError(
      f'{out_dir} already exists and is not an empty folder; expected a new '
      'or empty folder for the data set')
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise taken
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  # A partial data set must never look like a finished one, so everything is
  # written beside out_dir and renamed into place at the end.
  staging = out_dir.parent / f'.{out_dir.name}.partial-{uuid.uuid4().hex}'
  staging.mkdir()
  try:
    rows = []
    n = int(round(seconds * sample_rate))
    for machine_type in machine_types:
      rows += _write_type(staging, machine_type, seed, clips_per_id, n,
                          sample_rate)
    (staging / 'eval_data_list.csv').write_text(
        ''.join(','.join(row) + '\n' for row in rows))
    try:
      if out_dir.exists():
        out_dir.rmdir()
      staging.rename(out_dir)
    except OSError as err:
      if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
        raise taken from err
      raise
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return out_dir


def _define_flags():
  """Defines the command-line flags.

  Only the script defines them: on import they would clash with same-named
  flags of any program that imports generate().
  """
  flags.DEFINE_string('out', None, 'Folder to create for the data set.')
  flags.DEFINE_integer('seed', 0, 'Random seed; same seed, same bytes.')
  flags.DEFINE_integer(
      'clips_per_id', DEFAULT_CLIPS_PER_ID,
      'Normal training clips per machine id; the test sets get a quarter of '
      'it (at least 2) normal and as many anomalous clips.')
  flags.DEFINE_float('seconds', DEFAULT_SECONDS, 'Clip length in seconds.')
  flags.DEFINE_list('machine_types', list(MACHINE_TYPES),
                    'Machine types to generate.')
  flags.mark_flag_as_required('out')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  values = flags.FLAGS
  try:
    root = generate(
        values.out,
        seed=values.seed,
        clips_per_id=values.clips_per_id,
        seconds=values.seconds,
        machine_types=values.machine_types)
  except AeasdError as err:
    sys.exit(f'error: {err}')
  print(root)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
