#!/usr/bin/env bash
# Runs the GPU measurements of RESULTS.md in parts that each fit a 10-minute
# call on a lent GPU machine; every JSON and log ends up in OUT/results.tgz.
#
# Usage: OUT=dir bash benchmarks/gpu_session.sh PART...
# Parts:
#   core    AE with the PyTorch peer, time to first result, feature cache
#   grid    the rest of the train_speed grid, with the AE epoch HLO dumped
#   levers  command buffers off / with WHILE, and bfloat16, against the
#           default in the same call
#   ab      this library against an older copy in .ab/, made with
#           `git archive OLD aeasd_jax benchmarks configs | tar -x -C .ab`
#   final   time to first result again, bfloat16 at full size, features on
#           more clips
#   fused   config.train.kernels xla, jax_fused (aeasd_jax/training/fused.py) and
#           pallas (aeasd_jax/training/fused_pallas.py), same call, at most 8 minutes:
#           the Pallas one-step tests with the compiled kernels, then speed
#           (benchmarks/fused_table.py prints the table at the end)
#   fused_m0  the memo's stage M0 (concurrent command buffers) against the
#           default, XLA and Pallas paths, same call
#   classifier  STgram-MFN's epoch (10-s clips, batch 128, 1 and 3 seeds)
#           beside the PyTorch transcription (benchmarks/classifier_speed.py)
# soundfile, ml-collections and librosa (feature_speed's baseline) were not on
# the GPU image; their wheels in .whl/ are installed first. They were fetched
# with `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
# --platform any -d .whl soundfile cffi pycparser ml-collections librosa
# audioread decorator pooch platformdirs soxr`; the fused part's tests also
# need pytest iniconfig pluggy chex toolz where the image lacks them. Each
# step has its own time limit, so one failure does not lose the rest.
set -u
OUT=${OUT:?set OUT to a folder for the results}
RESULTS=$(mktemp -d)
trap 'tar czf "$OUT/results.tgz" -C "$RESULTS" .' EXIT
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step() {  # step NAME SECONDS COMMAND...: one timed, logged command.
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  echo "== $name exit $? ($(date -u +%H:%M:%S))"
  tail -n 15 "$RESULTS/$name.log"
}

ae_settings=AE:512:1x1,AE:512:6x1,AE:39552:6x1
for part in "$@"; do
  case $part in
    core)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm \
        --format=csv
      python3 -c "import jax, flax, optax, orbax.checkpoint as o;
print(jax.__version__, flax.__version__, optax.__version__, o.__version__,
jax.devices())"
      step ae_peer 270 python3 benchmarks/train_speed.py --peer \
        --settings=$ae_settings --out="$RESULTS/gpu_ae_peer.json"
      step ttfr 150 python3 benchmarks/time_to_first_result.py \
        --out="$RESULTS/gpu_ttfr.json"
      step features 120 python3 benchmarks/feature_speed.py \
        --clips_per_id=30 --repeats=3 --out="$RESULTS/gpu_features.json"
      ;;
    grid)
      step grid_ae 230 python3 benchmarks/train_speed.py \
        --settings=AE:512:6x1,AE:512:6x4,AE:39552:1x1,AE:39552:6x4 \
        --dump_hlo="$RESULTS/hlo" --out="$RESULTS/gpu_grid_ae.json"
      step grid_vae_idnn 300 python3 benchmarks/train_speed.py \
        --settings=VAE:512:1x1,VAE:512:6x1,VAE:512:6x4,VAE:39552:6x1,IDNN:512:1x1,IDNN:512:6x1,IDNN:512:6x4,IDNN:39552:6x1 \
        --repeats=3 --out="$RESULTS/gpu_grid_vae_idnn.json"
      ;;
    levers)
      # A/B on the launch-bound setting, fewer clips to leave time for
      # compiles; every variant against the default in the same call.
      small="--clips_per_group=2000 --repeats=5"
      step lever_default 120 python3 benchmarks/train_speed.py $small \
        --settings=AE:512:6x1,AE:39552:6x1 --out="$RESULTS/lever_default.json"
      XLA_FLAGS=--xla_gpu_enable_command_buffer= step lever_no_cmdbuf 90 \
        python3 benchmarks/train_speed.py $small --settings=AE:512:6x1 \
        --out="$RESULTS/lever_no_cmdbuf.json"
      XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL \
        step lever_while_cmdbuf 120 python3 benchmarks/train_speed.py $small \
        --settings=AE:512:6x1 --out="$RESULTS/lever_while_cmdbuf.json"
      step lever_bf16 120 python3 benchmarks/train_speed.py $small \
        --compute_dtype=bfloat16 --settings=AE:512:6x1,AE:39552:6x1 \
        --out="$RESULTS/lever_bf16.json"
      ;;
    ab)
      # The library before and after a change, same call: .ab/ holds the
      # older aeasd_jax, benchmarks and configs (git archive of that commit).
      small="--clips_per_group=2000 --repeats=5 --settings=AE:512:6x1,AE:39552:6x1"
      step ab_before 120 python3 .ab/benchmarks/train_speed.py $small \
        --out="$RESULTS/ab_before.json"
      step ab_after 120 python3 benchmarks/train_speed.py $small \
        --out="$RESULTS/ab_after.json"
      ;;
    final)
      step ttfr 150 python3 benchmarks/time_to_first_result.py \
        --out="$RESULTS/gpu_ttfr.json"
      step bf16 150 python3 benchmarks/train_speed.py --compute_dtype=bfloat16 \
        --settings=AE:512:6x1,AE:39552:6x1,IDNN:39552:6x1 --repeats=3 \
        --out="$RESULTS/gpu_bf16.json"
      step features 110 python3 benchmarks/feature_speed.py \
        --clips_per_id=60 --repeats=3 --out="$RESULTS/gpu_features.json"
      ;;
    fused)
      # Limits add up to 480 s, from the H100's ~10 s per compiled epoch
      # program (RESULTS.md); Triton's compile time for the Pallas kernels
      # is not known yet. First the one-step equivalence of the
      # compiled Triton kernels with the XLA step (float64; on a GPU the
      # tests run the kernels compiled, not interpreted), then speed. Each
      # record's loop_body counts the kernels of the scan body (a Pallas
      # kernel is a custom-call); the optimised HLO lands in hlo/. VAE has no
      # fused path, so it runs XLA only. Pallas runs in processes of its
      # own, so a kernel that fails to compile loses only its own rows.
      small="--clips_per_group=1000 --repeats=3"
      JAX_PLATFORMS=cuda step fused_check 75 python3 -m pytest -q \
        -p no:cacheprovider tests/test_fused.py \
        -k "one_pallas_step or (rejects and pallas)"
      step fused_512 125 python3 benchmarks/train_speed.py $small --peer \
        --kernels=xla,jax_fused --settings=AE:512:6x1,IDNN:512:6x1,AE:256:6x1 \
        --dump_hlo="$RESULTS/hlo" --out="$RESULTS/gpu_fused_512.json"
      step fused_512_pallas 100 python3 benchmarks/train_speed.py $small \
        --kernels=pallas --settings=AE:512:6x1,IDNN:512:6x1,AE:256:6x1 \
        --dump_hlo="$RESULTS/hlo" --out="$RESULTS/gpu_fused_512_pallas.json"
      step fused_vae 50 python3 benchmarks/train_speed.py $small \
        --kernels=xla --settings=VAE:512:6x1,VAE:256:6x1,VAE:39552:6x1 \
        --out="$RESULTS/gpu_fused_vae.json"
      step fused_39552 70 python3 benchmarks/train_speed.py $small --peer \
        --kernels=xla,jax_fused --settings=AE:39552:6x1,IDNN:39552:6x1 \
        --out="$RESULTS/gpu_fused_39552.json"
      step fused_39552_pallas 60 python3 benchmarks/train_speed.py $small \
        --kernels=pallas --settings=AE:39552:6x1,IDNN:39552:6x1 \
        --out="$RESULTS/gpu_fused_39552_pallas.json"
      python3 benchmarks/fused_table.py --markdown "$RESULTS"/gpu_fused_*.json
      ;;
    fused_m0)
      small="--clips_per_group=1000 --repeats=3 --settings=AE:512:6x1"
      step m0_default 70 python3 benchmarks/train_speed.py $small \
        --kernels=xla,pallas --out="$RESULTS/gpu_m0_default.json"
      XLA_FLAGS=--xla_gpu_command_buffer_scheduling_mode=CONCURRENT \
        step m0_concurrent 70 python3 benchmarks/train_speed.py $small \
        --kernels=xla,pallas --out="$RESULTS/gpu_m0_concurrent.json"
      python3 benchmarks/fused_table.py "$RESULTS"/gpu_m0_*.json
      ;;
    classifier)
      for seeds in 1 3; do
        step "classifier_${seeds}" 200 python3 benchmarks/classifier_speed.py \
          --seconds=10 --batch=128 --clips=1024 --seeds=$seeds --peer \
          --peer_steps=20 --out="$RESULTS/gpu_classifier_${seeds}.json"
      done
      ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
