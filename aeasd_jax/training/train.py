"""Training: the run policy and the loop over epochs, read top to bottom.

Every group (machine type, or type and id) times every seed is one model; all
models train together under jax.vmap, data-parallel over a device Mesh
(trainer.py). One run holds a workdir at a time.
"""

import concurrent.futures
import functools
import logging
import pathlib

import jax
import numpy as np

from aeasd_jax.workdir import checkpoint
from aeasd_jax.training import config_check
from aeasd_jax.data import dataset
from aeasd_jax.data import labels
from aeasd_jax.models import registry
from aeasd_jax.training import state as state_lib
from aeasd_jax.scoring import group_scoring
from aeasd_jax.training import interrupts
from aeasd_jax.workdir import metric_log
from aeasd_jax.training import run_identity
from aeasd_jax import runtime
from aeasd_jax.training import trainer as trainer_lib
from aeasd_jax.data import window_data
from aeasd_jax.workdir import layout
from aeasd_jax.workdir import lock
from aeasd_jax.errors import AeasdError
from aeasd_jax.errors import Interrupted

log = logging.getLogger(__name__)


def check_trainable(config, features, groups):
  """Every clip holds an example, every group a full batch and some sound.

  Checked before anything compiles, so the message names the real cause.
  """
  frames = registry.example_frames(config)
  window_data.check_clip_lengths(
    features,
    [c for g in groups for c in (*g.train_clips, *g.val_clips, *g.test_clips)],
    frames,
  )
  window_data.check_constant_clips(features, groups)
  batch_size = config.train.batch_size
  examples = "clips" if registry.is_classifier(config) else "vectors"
  for group in training_groups(config, groups):
    count = window_data.window_count(features, group.train_clips, frames)
    if count < batch_size:
      raise AeasdError(
        f"group {group.name} has {count} training {examples}, fewer than"
        f" config.train.batch_size={batch_size}; expected a smaller batch"
        " size or more training clips"
      )


def training_groups(config, groups):
  """The groups models train on: each scored group, or all in one group.

  A classifier learns every type's classes at once.
  """
  if registry.is_classifier(config):
    return [dataset.merged_group(groups, state_lib.CLASSIFIER_GROUP)]
  return groups


def class_names(config, features, groups):
  """A classifier's classes, from its training clips' names; else ()."""
  if not registry.is_classifier(config):
    return ()
  return labels.class_names(
    features.clips,
    [c for g in groups for c in (*g.train_clips, *g.val_clips)],
    config.data.labels,
  )


def _device_resident(config, features, groups):
  """Whether the training frames stay on the devices, or are streamed.

  config.data.device_resident decides; when unset, resident is chosen when
  the frames take at most half the free memory of a device (the rest is for
  the programs), and always where the backend reports no memory figures.
  """
  clips = [c for g in groups for c in (*g.train_clips, *g.val_clips)]
  needed = int(features.lengths[clips].sum()) * features.frames.shape[1] * 4
  if features.waves is not None and registry.spec(config).uses_waveform:
    needed += len(clips) * features.waves.shape[1] * 4
  if config.data.device_resident is not None:
    return config.data.device_resident
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return True
  free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  resident = needed <= free // 2
  log.info(
    "training frames take %.2f GB, the device has %.2f GB free: %s",
    needed / 1e9,
    free / 1e9,
    "keeping them on the device" if resident else "streaming them",
  )
  return resident


def _check_stream_chunks(config, features, groups):
  """A streamed chunk of the shortest clips must still fill one batch."""
  chunk_clips = config.data.stream_chunk_clips
  shortest = min(
    int(features.lengths[c]) for g in groups for c in g.train_clips
  )
  windows = shortest - registry.example_frames(config) + 1
  if chunk_clips * windows < config.train.batch_size:
    raise AeasdError(
      f"config.data.stream_chunk_clips={chunk_clips}: a streamed chunk of"
      f" the shortest clips holds {chunk_clips * windows} training vectors,"
      f" fewer than config.train.batch_size={config.train.batch_size};"
      " expected at least"
      f" {-(-config.train.batch_size // windows)} clips per chunk"
    )


def _finite_or_raise(metrics, setup, epoch, last_saved):
  bad = [setup.model_names[m] for m in np.flatnonzero(~metrics["finite"])]
  if bad:
    group, seed = bad[0].rsplit("/", 1)
    kept = (
      f"the last good checkpoint (epoch {last_saved}) is kept"
      if last_saved is not None
      else "no checkpoint was saved yet"
    )
    raise AeasdError(
      f"non-finite loss or gradient in epoch {epoch} for group {group},"
      f" {seed} ({len(bad)} model(s) in all); {kept}. Expected finite"
      " training: lower config.train.learning_rate or check the data"
    )


def _selection_metric(config, metrics, epoch, score_dev_auc):
  """Lower is better; +inf leaves a model's best weights unchanged.

  With select_by="last" (the baselines' choice) -epoch always improves, so
  the "best" weights are the latest. With select_by="dev_auc" (AE-ASD's
  choice, which peeks at labelled test data) the dev test AUC is also
  recorded in `metrics`.
  """
  if config.train.select_by == "last":
    return np.full_like(metrics["train_loss"], -epoch)
  if config.train.select_by == "val_loss":
    return metrics["val_loss"]
  if epoch % config.train.select_every:
    return np.full_like(metrics["val_loss"], np.inf)
  # "dev_auc" or "dev_auc_pauc": recorded as dev_auc either way.
  metrics["dev_auc"] = score_dev_auc()
  return -metrics["dev_auc"]


def _make_trainer(config, features, groups):
  """A Trainer with the frames resident on the devices, or streamed."""
  frames = registry.example_frames(config)
  names = class_names(config, features, groups)
  examples = dict(
    labels=(
      labels.clip_labels(features.clips, names, config.data.labels)
      if names
      else None
    ),
    waveforms=registry.spec(config).uses_waveform,
  )
  trained = training_groups(config, groups)
  trainer = functools.partial(
    trainer_lib.Trainer,
    config,
    [g.name for g in groups],
    load=False,
    class_names=names,
  )
  if _device_resident(config, features, trained):
    return trainer(
      window_data.gather_host_windows(features, trained, frames, **examples)
    )
  _check_stream_chunks(config, features, trained)
  val_windows = window_data.host_windows(
    features,
    [[]] * len(trained),
    [g.val_clips for g in trained],
    frames,
    **examples,
  )
  chunks = functools.partial(
    window_data.stream_chunks,
    features,
    trained,
    frames,
    config.data.stream_chunk_clips,
    seed=config.seed,
    **examples,
  )
  return trainer(val_windows, chunks=chunks)


def _compile_while_loading(trainer, timer):
  """Compiles from shapes on a thread while the frames go to the devices.

  Notes whether the persistent compilation cache served the compile.
  """

  def compile_programs():
    with timer.phase("compile"), runtime.compile_tracker() as compiles:
      trainer.compile()
    timer.notes["compile"] = ("warm" if compiles.warm else "cold") + (
      ", overlapped with loading"
    )

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    compiled = pool.submit(compile_programs)
    with timer.phase("features"):
      trainer.load()
    compiled.result()


def train_and_evaluate(config, workdir):
  """Trains every group's models, resuming from the workdir's checkpoints.

  Then fits each group's decision threshold for the best weights. One run
  holds the workdir at a time.

  Returns:
    The final training state (stacked over models).
  """
  config_check.check_config(config)
  workdir = layout.Workdir(workdir)
  # The lock comes first, so that a refused second run writes nothing.
  with lock.hold(workdir, config.workdir_lock_stale_s):
    resuming = workdir.config_file.exists()
    run_identity.check_resume(workdir, config)
    return _train_and_evaluate(config, workdir, resuming)


def _train_and_evaluate(config, workdir, resuming):
  """The run; it writes to the workdir only once every check has passed."""
  timer = metric_log.PhaseTimer()
  with timer.phase("features"):
    config, features, groups, trainer = _load_and_check(
      config, workdir, resuming
    )
  _compile_while_loading(trainer, timer)
  mngr = checkpoint.manager(workdir.checkpoints, config.train.keep_checkpoints)
  state = _initial_state(trainer, mngr)
  done = mngr.latest_step() or 0
  config = _record_run(
    config, workdir, features, groups, done, trainer.setup.class_names
  )
  writer = _open_metric_log(config, workdir, trainer, mngr.latest_step())
  score_dev_auc = functools.partial(
    group_scoring.dev_auc_per_model, config, features, groups, trainer.setup
  )
  state = _train_epochs(
    config, trainer, state, mngr, writer, timer, score_dev_auc
  )
  best = trainer_lib.local_copy(state.best)
  _warn_unselected(config, trainer.setup, groups, best)
  with timer.phase("thresholds"):
    _fit_score_statistics(
      config, workdir, features, groups, trainer.setup, best, int(state.epoch)
    )
  writer.write(
    {
      "timing_s": timer.totals(),
      "compile": timer.notes["compile"].split(",")[0],
    }
  )
  log.info("time: %s", timer.summary())
  writer.close()
  return state


def _load_and_check(config, workdir, resuming):
  """The data and a Trainer for it, once the data passes every check.

  Returns:
    (config with the year and channel resolved, features, groups, trainer)
  """
  config = dataset.resolve_year_and_channel(config)
  features, groups = dataset.load(
    config, waveforms=registry.spec(config).uses_waveform
  )
  check_trainable(config, features, groups)
  if resuming:
    run_identity.check_same_data(workdir, config, features, groups)
  return config, features, groups, _make_trainer(config, features, groups)


def _initial_state(trainer, mngr):
  """The latest checkpoint's state, or a new one when there is none."""
  last_saved = mngr.latest_step()
  if last_saved is None:
    return trainer.init_state()
  state = checkpoint.restore(mngr, trainer.abstract_state())
  log.info("resuming from epoch %d in %s", last_saved, mngr.directory)
  return state


def _open_metric_log(config, workdir, trainer, last_saved):
  """The metric log, without the records of epochs trained again."""
  # Epochs after the checkpoint are trained again; their old records would
  # contradict the new ones.
  metric_log.drop_epochs_after(workdir.metrics_file, last_saved)
  writer = metric_log.MetricWriter(
    workdir.metrics_file, config.train.tensorboard
  )
  setup = trainer.setup
  writer.write(
    {"kernels": setup.kernels, "kernels_requested": config.train.kernels}
  )
  log.info(
    "training %d model(s) (%s) on %d device(s), %s kernels (asked: %s): %s",
    len(setup.model_names),
    config.model.name,
    trainer.mesh.devices.size,
    setup.kernels,
    config.train.kernels,
    ", ".join(setup.model_names),
  )
  return writer


def _train_epochs(config, trainer, state, mngr, writer, timer, score_dev_auc):
  """Trains up to config.train.epochs, checkpointing as configured.

  A first Ctrl-C or SIGTERM finishes and saves the current epoch; a second
  Ctrl-C inside an epoch stops at once, keeping the last checkpoint. Either
  way the run ends in Interrupted, and the rerun resumes.
  """
  last_saved = mngr.latest_step()
  stop = interrupts.StopRequest()
  epoch = int(state.epoch)
  try:
    with stop.installed():
      while epoch < config.train.epochs and not stop.requested:
        epoch += 1
        with timer.phase("train") as elapsed, stop.interruptible():
          state, metrics = trainer.epoch(state)
          metrics = jax.device_get(trainer_lib.local_copy(metrics))
        _finite_or_raise(metrics, trainer.setup, epoch, last_saved)
        selection = _selection_metric(
          config,
          metrics,
          epoch,
          lambda: score_dev_auc(trainer_lib.local_copy(state)),
        )
        state = trainer.keep_best(state, selection)
        _log_epoch(config, trainer.setup, writer, epoch, metrics, elapsed())
        if (
          epoch % config.train.checkpoint_every == 0
          or epoch == config.train.epochs
          or stop.requested
        ):
          with timer.phase("checkpoint"):
            checkpoint.save(mngr, epoch, state, in_flight=last_saved)
            last_saved = epoch
      # Still under the handlers: a signal during the last write only asks
      # for a stop, where it would kill the process or cut the write short.
      with timer.phase("checkpoint"):
        checkpoint.wait(mngr, last_saved)
  except KeyboardInterrupt:
    checkpoint.wait(mngr, last_saved)
    raise Interrupted(
      f"stopped during epoch {epoch}; rerun the same command to resume from"
      f" {_resume_point(mngr.latest_step())}"
    ) from None
  if stop.requested:
    raise Interrupted(
      f"stopped after epoch {epoch} as asked ({stop.reason});"
      " rerun the same command to resume from it",
      stop.signum,
    )
  return state


def _log_epoch(config, setup, writer, epoch, metrics, seconds):
  """One epoch's record in the metric log, and a line every log_every."""
  rate = int(metrics["steps"].sum()) * config.train.batch_size / seconds
  writer.write(
    {
      "epoch": epoch,
      "samples_per_s": rate,
      **{
        k: dict(zip(setup.model_names, map(float, metrics[k])))
        for k in ("train_loss", "val_loss", "dev_auc")
        if k in metrics
      },
    },
    step=epoch,
  )
  if epoch % config.train.log_every == 0 or epoch == config.train.epochs:
    log.info(
      "epoch %d/%d  loss %s  val %s  %.3gM samples/s",
      epoch,
      config.train.epochs,
      _per_group(metrics["train_loss"], setup),
      _per_group(metrics["val_loss"], setup),
      rate / 1e6,
    )


def _fit_score_statistics(
  config, workdir, features, groups, setup, best, epoch
):
  """Stores the best weights' thresholds (and Mahalanobis statistics).

  evaluate.py and --wav then find them in the workdir.
  """
  load_data = lambda: (features, groups)
  weights = (setup, best.params, best.batch_stats)
  statistics = group_scoring.statistics_for(
    config, workdir, load_data, *weights
  )
  # The 2023+ baseline's covariance pass after the last epoch, stored for
  # evaluate.py --score=mahalanobis; other years fit it when asked.
  if (
    setup.task == registry.RECONSTRUCTION
    and config.data.dcase_year >= 2023
    and statistics is None
  ):
    group_scoring.mahalanobis_precision(config, workdir, load_data, *weights)
  group_scoring.fit_thresholds(
    config, workdir, features, groups, *weights, f"best@{epoch}", statistics
  )


def _record_run(config, workdir, features, groups, done, classes):
  """Writes the run's config, groups and data identity; returns its config.

  The config keeps what is true of the weights: paths resolved, so that
  evaluating from another folder finds the same data, and at least the
  epochs already trained.
  """
  config = config.copy_and_resolve_references()
  if config.train.epochs < done:
    log.warning(
      "workdir %s holds %d epochs, more than config.train.epochs=%d: nothing"
      " to train, and its config.json keeps epochs=%d, true to its weights",
      workdir,
      done,
      config.train.epochs,
      done,
    )
    config.train.epochs = done
  for section, name in (("data", "root"), ("data", "cache_dir")):
    if config[section][name]:
      config[section][name] = str(
        pathlib.Path(config[section][name]).expanduser().resolve()
      )
  run_identity.record_run(
    workdir,
    config,
    [g.name for g in groups],
    dataset.data_identity(config, features, groups),
    classes,
  )
  return config


def _resume_point(last_saved):
  return (
    f"epoch {last_saved}, its last checkpoint"
    if last_saved is not None
    else "the start: no checkpoint was saved yet"
  )


def _warn_unselected(config, setup, groups, best):
  """Says which models' "best" weights are their latest, and why."""
  unselected = [
    name
    for name, metric in zip(setup.model_names, np.asarray(best.metric))
    if not np.isfinite(metric)
  ]
  if not unselected:
    return
  if config.train.select_by.startswith("dev_auc"):
    why = (
      f"config.train.select_every={config.train.select_every} exceeds"
      " the epochs trained, so no dev AUC check ran, or the group has no"
      " dev test clips (an eval set's own machine type)"
    )
  else:
    empty = [g.name for g in groups if not len(g.val_clips)]
    why = (
      f"no training clip was held out for validation in {empty}"
      f" (config.train.validation_split="
      f"{config.train.validation_split}, too few clips)"
      if empty
      else "the validation loss was never finite"
    )
  log.warning(
    "no model selection for %s: %s; their 'best' weights are their latest",
    ", ".join(unselected),
    why,
  )


def _per_group(values, setup):
  return " ".join(
    f"{name}={v:.4g}" for name, v in zip(setup.model_names, values)
  )
