"""The synthetic machines: a fan, a valve and a slider, normal or anomalous.

Each design is a function (rng, samples, sample_rate, machine_id, anomaly,
speed=1.0) -> a unit-RMS signal; clips.py mixes it with background noise and
writes the clips in the DCASE layouts. `speed` is how fast the machine runs
relative to its design, the attribute a DCASE 2022+ target domain shifts.
"""

import numpy as np


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


def coloured_noise(rng, n, sample_rate, exponent):
  """Unit-RMS Gaussian noise whose power density falls as f**-exponent."""
  freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
  # Flat below 20 Hz so the slope does not blow up at DC.
  gain = np.maximum(freqs, 20.0) ** (-exponent / 2.0)
  spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(
    freqs.size
  )
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
  spectrum = magnitude * (
    rng.standard_normal(magnitude.shape)
    + 1j * rng.standard_normal(magnitude.shape)
  )
  grains = np.fft.irfft(spectrum, size, axis=0) * np.hanning(size)[:, None]
  out = np.zeros((frames - 1) * hop + size)
  # Grain j lands at j * hop; slicing each grain into hop-long pieces turns the
  # overlap-add into size // hop contiguous additions.
  for i in range(size // hop):
    out[i * hop : i * hop + frames * hop] += grains[
      i * hop : (i + 1) * hop
    ].T.reshape(-1)
  return out


def _partials(phase, orders, amplitudes, rng):
  """Sum of sinusoids at `orders` (multiples of 1/2) of the running `phase`."""
  # A wavetable two cycles long, built by one inverse FFT, costs one
  # interpolation per sample instead of one sine per partial and sample.
  size = 8192
  spectrum = np.zeros(size // 2 + 1, complex)
  offsets = rng.uniform(0.0, 2.0 * np.pi, len(orders))
  spectrum[np.round(2 * orders).astype(int)] = (
    size / 2 * amplitudes * np.exp(1j * (offsets - np.pi / 2))
  )
  table = np.fft.irfft(spectrum, size)
  grid = np.linspace(0.0, 4.0 * np.pi, size, endpoint=False)
  return np.interp(phase, grid, table, period=4.0 * np.pi)


_BLADES = 6


def _fan(rng, n, sample_rate, machine_id, anomaly, speed=1.0):
  """Blade-pass hum with harmonics over pink aerodynamic noise.

  Anomalies are all off the normal manifold of a log-mel autoencoder: tones
  that are not harmonics of the blade pass ('bearing'), half-order harmonics
  of a loose mount ('looseness') and an unbalanced rotor ('unbalance'), which
  modulates the hum once per revolution, with sidebands between the
  harmonics, and rocks the housing, so that the level swells from frame to
  frame.

  `speed` scales the rotor speed and with it the blade-pass frequency.
  """
  t = np.arange(n) / sample_rate
  f0 = 140.0 * 1.12**machine_id * speed * rng.uniform(0.998, 1.002)
  drift = 1.0 + 0.002 * np.sin(
    2.0 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0.0, 2.0 * np.pi)
  )
  phase = 2.0 * np.pi * f0 * np.cumsum(drift) / sample_rate
  orders = np.arange(1, int(4000.0 // f0) + 1)
  amplitudes = orders**-0.8
  hum = _partials(phase, orders, amplitudes, rng)
  broadband = 0.5 * _rms(hum) * coloured_noise(rng, n, sample_rate, 1.0)
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
    rocking = np.sin(
      2.0 * np.pi * rng.uniform(2.0, 5.0) * t + rng.uniform(0.0, 2.0 * np.pi)
    )
    hum = (
      hum
      * (1.0 + rng.uniform(0.5, 0.8) * per_turn)
      * (1.0 + rng.uniform(0.5, 0.8) * rocking)
    )
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


def _valve(rng, n, sample_rate, machine_id, anomaly, speed=1.0):
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

  `speed` divides the period; keep the period within 130-170 ms for the
  reason above.
  """
  period = (0.130 + 0.010 * machine_id) / speed * rng.uniform(0.99, 1.01)
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
  hiss = 0.02 * coloured_noise(rng, n, sample_rate, 0.5)
  return (clicks + hiss * _rms(clicks)) / _rms(clicks)


def _slider(rng, n, sample_rate, machine_id, anomaly, speed=1.0):
  """A carriage sliding to and fro, with a thump at each end stop.

  Friction noise has a band that follows the position and a motor whine has
  a pitch that follows the carriage's velocity.

  'short_stroke' halts every stroke early with a knock, as if the rail were
  blocked; 'scrape' adds harsh 3-6 kHz noise with a rough envelope while the
  carriage moves.

  `speed` divides the stroke period; the carriage covers the same rail in
  less time, so the whine rises with it.
  """
  hop = 128
  size = 512
  period = (0.40 + 0.05 * machine_id) / speed
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
    velocity = np.where(moving, np.sin(np.pi * np.minimum(u, 1.0)), 0.0)
    return position, velocity

  position, velocity = motion(for_grains)
  freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
  low = 400.0 * 1.1**machine_id
  centre = low * 4.0**position
  band = np.exp(
    -0.5 * (np.log(np.maximum(freqs, 1.0)[:, None] / centre) / 0.25) ** 2
  )
  magnitude = velocity * band
  if anomaly == 'scrape':
    harsh = (freqs[:, None] > 3000.0) & (freqs[:, None] < 6000.0)
    roughness = rng.gamma(0.5, 2.0, frames)
    magnitude = magnitude + 0.4 * harsh * velocity * roughness
  friction = _shaped_noise(rng, magnitude, hop)[size // 2 : size // 2 + n]

  _, velocity = motion(t)
  pitch = 600.0 * 1.1**machine_id * speed * (0.5 + 0.5 * velocity)
  whine = velocity * np.sin(2.0 * np.pi * np.cumsum(pitch) / sample_rate)

  # A thump wherever a stroke ends, i.e. where the carriage comes to rest.
  ends = np.flatnonzero((velocity[:-1] > 0.0) & (velocity[1:] == 0.0)) + 1
  pulses = np.zeros(n)
  pulses[ends] = 1.0
  k = np.arange(int(0.06 * sample_rate)) / sample_rate
  thump = np.exp(-k / 0.015) * np.sin(2.0 * np.pi * 180.0 * k)
  if anomaly == 'short_stroke':
    # Halting at full speed is a metallic knock, not a damped end stop.
    thump += (
      2.0
      * np.exp(-k / 0.02)
      * (np.sin(2.0 * np.pi * 1300.0 * k) + np.sin(2.0 * np.pi * 2900.0 * k))
    )
  from scipy import signal  # pylint: disable=g-import-not-at-top  # Slow import.

  thumps = signal.fftconvolve(pulses, thump)[:n]
  machine = friction / _rms(friction) + 0.3 * whine + 1.5 * thumps
  return machine / _rms(machine)


MACHINES = {'fan': _fan, 'valve': _valve, 'slider': _slider}
ANOMALIES = {
  'fan': ('bearing', 'looseness', 'unbalance'),
  'valve': ('jitter', 'stutter'),
  'slider': ('short_stroke', 'scrape'),
}
