"""Feature-cache build speed in clips/s, against the baseline's librosa loop.

Also what clips of many lengths cost: programs compiled and seconds, for a
cache build and for log-mel one file at a time (as --wav scoring runs it).

Usage: python benchmarks/feature_speed.py [--quick] [--out=features.json]
"""

import argparse
import functools
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import soundfile

# configs/ and benchmarks/ sit beside the package, not inside it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from aeasd_jax.data import audio
from aeasd_jax.data import cache
from aeasd_jax.data import dataset
from aeasd_jax.data import dcase
from aeasd_jax.data import features
from aeasd_jax import runtime
from aeasd_jax import synth
from benchmarks import common
from configs import default
# pylint: enable=g-import-not-at-top,wrong-import-position


def time_cache_builds(clips, config, repeats, work):
  """Seconds of each library cache build, every one into a fresh folder."""
  seconds = []
  for i in range(repeats):
    start = time.perf_counter()
    cache.build_or_load(
      clips,
      dataset.feature_params(config),
      work / f"cache{i}",
      num_workers=config.data.decode_workers,
      batch_size=config.data.feature_batch,
      show_progress=False,
    )
    seconds.append(time.perf_counter() - start)
  return seconds


def time_librosa(clips, librosa):
  """Seconds of the baseline's sequential load + melspectrogram + log loop."""

  def one(path):
    y, sr = librosa.load(path, sr=None, mono=False)
    mel = librosa.feature.melspectrogram(
      y=y, sr=sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0
    )
    return 10.0 * np.log10(mel + sys.float_info.epsilon)

  one(clips[0].path)  # librosa builds its filters and caches on first use.
  start = time.perf_counter()
  for clip in clips:
    one(clip.path)
  return time.perf_counter() - start


def write_clips(folder, seconds, sample_rate):
  """Noise clips of the given lengths, as dcase.Clips."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  clips = []
  for i, s in enumerate(seconds):
    path = folder / f"normal_id_00_{i:08d}.wav"
    x = 0.1 * rng.standard_normal(int(round(s * sample_rate)))
    soundfile.write(path, x.astype(np.float32), sample_rate, subtype="PCM_16")
    clips.append(dcase.parse_clip(path, "fan", "train", "dev"))
  return clips


def time_lengths(config, work, count, seconds):
  """Programs and seconds for `count` clips of one length, then of many.

  The many are `count` distinct lengths from `seconds` to twice that. Each
  setting is timed three ways: a cache build into a fresh folder, log-mel
  one file at a time through features.ClipLogMel (what --wav scoring does),
  and the same with jax.jit(log_mel) (what --wav scoring did before the
  lengths were bucketed), each with its compiles.
  """
  params = dataset.feature_params(config)
  rate = config.features.sample_rate
  settings = {
    "one length": [seconds] * count,
    "distinct lengths": [seconds * (1 + i / count) for i in range(count)],
  }
  records = []
  for name, lengths in settings.items():
    folder = work / "lengths" / name.replace(" ", "_")
    clips = write_clips(folder / "data", lengths, rate)
    record = {
      "setting": name,
      "clips": count,
      "distinct_lengths": len({int(round(s * rate)) for s in lengths}),
    }
    with runtime.compile_tracker() as compiles:
      start = time.perf_counter()
      cache.build_or_load(
        clips,
        params,
        folder / "cache",
        num_workers=config.data.decode_workers,
        batch_size=config.data.feature_batch,
        show_progress=False,
      )
    record.update(
      cache_build_s=time.perf_counter() - start,
      cache_build_programs=compiles.programs,
    )
    per_file = {
      "bucketed": lambda y, fn=features.ClipLogMel(params): fn([y])[0],
      "unbucketed": jax.jit(functools.partial(features.log_mel, **params)),
    }
    for method, log_mel in per_file.items():
      with runtime.compile_tracker() as compiles:
        start = time.perf_counter()
        for clip in clips:
          np.asarray(log_mel(audio.read_audio(clip.path, sample_rate=rate)))
      record[f"per_file_{method}_s"] = time.perf_counter() - start
      record[f"per_file_{method}_programs"] = compiles.programs
    print(
      f"{name}: {count} clips of {record['distinct_lengths']} length(s)"
      f" from {min(lengths):g} to {max(lengths):g} s: cache build"
      f" {record['cache_build_s']:.2f} s, {record['cache_build_programs']}"
      " program(s); per file"
      f" {record['per_file_bucketed_s']:.2f} s,"
      f" {record['per_file_bucketed_programs']} program(s) (unbucketed"
      f" jit(log_mel): {record['per_file_unbucketed_s']:.2f} s,"
      f" {record['per_file_unbucketed_programs']} program(s))"
    )
    records.append(record)
  return records


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="one machine type and 2 normal clips per id (30 clips)",
  )
  parser.add_argument(
    "--clips_per_id",
    type=common.positive_int,
    help="synth.generate's clips_per_id; default 8 (180 clips), 2 with --quick",
  )
  parser.add_argument(
    "--seconds",
    type=float,
    default=10.0,
    help="clip length; 10 s is a DCASE clip",
  )
  parser.add_argument(
    "--machine_types",
    default=None,
    help="comma-separated synthetic types; default all, fan with --quick",
  )
  parser.add_argument(
    "--repeats",
    type=common.positive_int,
    help="cache builds; the median counts; default 3, 1 with --quick",
  )
  parser.add_argument(
    "--length_clips",
    type=common.positive_int,
    help="clips of one length, then of as many distinct lengths, for the"
    " programs-compiled comparison; default 40, 8 with --quick",
  )
  parser.add_argument("--out", help="write the JSON results here")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  clips_per_id = args.clips_per_id or (2 if args.quick else 8)
  repeats = args.repeats or (1 if args.quick else 3)
  if args.machine_types:
    machine_types = tuple(args.machine_types.split(","))
  else:
    machine_types = ("fan",) if args.quick else synth.MACHINE_TYPES
  config = default.get_config()
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    root = synth.generate(
      work / "data",
      clips_per_id=clips_per_id,
      seconds=args.seconds,
      sample_rate=config.features.sample_rate,
      machine_types=machine_types,
    )
    clips = dcase.discover(root)
    build_s = time_cache_builds(clips, config, repeats, work)
    try:
      # pylint: disable-next=g-import-not-at-top
      import librosa
    except ImportError as e:
      librosa = None
      print(f"librosa is not importable ({e}); skipping the comparison.")
    librosa_s = time_librosa(clips, librosa) if librosa else None
    lengths = time_lengths(
      config,
      work,
      args.length_clips or (8 if args.quick else 40),
      args.seconds,
    )
  # The first build compiles the log-mel program (seconds on a GPU); later
  # builds in this process reuse it, as a long build amortises it.
  first = len(clips) / build_s[0]
  later = build_s[1:] or build_s
  ours = len(clips) / statistics.median(later)
  device = jax.local_devices()[0]
  print(
    f"{len(clips)} clips of {args.seconds:g} s on {device.device_kind}"
    f" ({device.platform})"
  )
  print(
    f"aeasd_jax cache build: {ours:.1f} clips/s (median of"
    f" {len(later)} build(s){' after the first' if build_s[1:] else ''});"
    " first build, log-mel"
    f" compile included: {first:.1f} clips/s ({build_s[0]:.2f} s)"
  )
  versions = {"librosa": librosa.__version__} if librosa else {}
  result = {
    "header": common.header(**versions),
    "clips": len(clips),
    "seconds": args.seconds,
    "cache_build_s": build_s,
    "first_build_clips_per_s": first,
    "ours_clips_per_s": ours,
    "lengths": lengths,
  }
  if librosa_s is not None:
    theirs = len(clips) / librosa_s
    print(f"librosa, sequential: {theirs:.1f} clips/s")
    print(
      f"ours / librosa: {ours / theirs:.2f}x (first build:"
      f" {first / theirs:.2f}x)"
    )
    result.update(
      librosa_s=librosa_s,
      librosa_clips_per_s=theirs,
      ours_over_librosa=ours / theirs,
      first_build_over_librosa=first / theirs,
    )
  if args.out:
    common.write_json(args.out, result)


if __name__ == "__main__":
  runtime.run(main)
