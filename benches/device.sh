#!/usr/bin/env bash
# The real-GPU check, in one script: Vulkan loader and adapters, the GPU agreement and
# fusion tests on the hardware adapter, the epoch and kernel benchmarks beside the CPU
# (the kernels' step profile sets each kernel against the device's bound), a default
# 10-epoch `train --adapter vulkan`, 3 epochs of `--hidden 4096,4096 --batch-size 512`,
# 2 epochs of the convnet, the same models in PyTorch on CUDA where it is installed, and
# one short epoch on wgpu's GL backend, all written to one results file.
#
#   benches/device.sh pack   # on the build machine: build the five programs, strip them
#                            # into .device/programs.tar.xz (16 MB: each embeds the same
#                            # 11 MB of MNIST, which xz's 96 MiB window stores once), and
#                            # fetch the Vulkan loader .debs into .gl/
#   benches/device.sh        # on the GPU machine (or here): run everything
#
# With BASELINE_EPOCH=PATH (an epoch bench built from an earlier commit, e.g. by
# `git worktree add` and `cargo bench --bench epoch --no-run` there), `pack` adds it, and
# the run measures it right before this build's epoch bench, in the same sitting: the
# before-and-after figures of a change.
#
# For a GPU machine that has no Rust toolchain: `pack` on the build machine, copy the
# checkout with .gl/ and .device/ there, and run `bash benches/device.sh` in it. It is
# meant to finish in a few minutes; each part has its own time limit (590 s in all), and a
# part that fails or runs out of time is recorded and the rest still runs.
#
# Environment:
#   OUT             results go to $OUT/device-results.txt (else target/device-results.txt)
#   DEVICE_BACKEND  wgpu backend to check (default vulkan)
#   DEVICE_QUICK=1  a shortened run for software adapters (lavapipe needs ~27 s per
#                   60,000-sample epoch): 1,000-sample GPU epochs, 1 repetition per row,
#                   and `train` on 3,000 samples for 2 epochs instead of the default run
set -uo pipefail
cd "$(dirname "$0")/.."

backend=${DEVICE_BACKEND:-vulkan}
quick=${DEVICE_QUICK:-0}
programs=(mnist-gpu gpu_agreement fusions epoch kernels)

# Build the programs here and pack them, stripped and small enough to copy to the GPU
# machine with the checkout; fetch the Vulkan loader packages for a machine that has
# only NVIDIA's driver.
pack() (
  set -e
  cargo build --release --bin mnist-gpu
  local tests benches
  tests=$(cargo test --release --test gpu_agreement --test fusions --no-run 2>&1)
  benches=$(cargo bench --bench epoch --bench kernels --no-run 2>&1)
  local stage=target/device-programs
  mkdir -p .device "$stage"
  strip -o "$stage/mnist-gpu" target/release/mnist-gpu
  for name in gpu_agreement fusions epoch kernels; do
    local exe
    exe=$(printf '%s\n%s\n' "$tests" "$benches" | grep -o "target/release/deps/$name-[0-9a-f]*" | tail -1)
    strip -o "$stage/$name" "$exe"
  done
  local packed=("${programs[@]}")
  if [ -n "${BASELINE_EPOCH:-}" ]; then
    strip -o "$stage/epoch-baseline" "$BASELINE_EPOCH"
    packed+=(epoch-baseline)
  fi
  tar -C "$stage" -cf - "${packed[@]}" | xz -T1 --lzma2=preset=6,dict=96MiB >.device/programs.tar.xz
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >>"$exclude"
  grep -qx '/.gl/' "$exclude" 2>/dev/null || echo '/.gl/' >>"$exclude"
  if ! ls .gl/*.deb >/dev/null 2>&1; then
    local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p .gl /tmp/amd64/partial
    # shellcheck disable=SC2086
    apt-get $o update -qq
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  du -sh .device .gl
  echo "now copy the checkout with .gl/ and .device/ to the GPU machine and run: bash benches/device.sh"
)

section() { printf '\n===== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

# Runs "$@" under a time limit of $1 seconds, recording its status and seconds.
summary=()
part() {
  local name=$1 limit=$2
  shift 2
  section "$name"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local status=$?
  local verdict=ok
  [ "$status" = 0 ] || verdict="FAILED (exit $status)"
  [ "$status" = 124 ] && verdict="TIMED OUT after ${limit} s"
  summary+=("$(printf '%-28s %-28s %4d s' "$name" "$verdict" $((SECONDS - start)))")
}

# The Vulkan loader: unpacked from the .debs in .gl/ when the machine has none, and
# NVIDIA's driver named when the loader does not find it.
loader() {
  if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    if ls .gl/*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      for f in .gl/*.deb; do dpkg -x "$f" /; done
      ldconfig
      echo "Vulkan loader unpacked from .gl/"
    else
      echo "no Vulkan loader, and no .gl/*.deb to unpack as root (run 'benches/device.sh pack' first)"
    fi
  fi
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
    export VK_DRIVER_FILES=$icd
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
  fi
  # Mesa's device-select layer complains when this is unset.
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
  ldconfig -p | grep 'libvulkan.so.1' || true
}

# The programs: packed into .device/ by `pack` (else built here with cargo), unpacked into
# target/device-run/.
find_programs() {
  if [ ! -f .device/programs.tar.xz ]; then
    command -v cargo >/dev/null || { echo "no .device/programs.tar.xz and no cargo: run 'benches/device.sh pack' on the build machine"; exit 1; }
    pack >/dev/null || { echo "building the programs failed"; exit 1; }
  fi
  bin=target/device-run
  # Only this pack's programs (an earlier run's baseline bench would otherwise run again).
  rm -rf "$bin"
  mkdir -p "$bin"
  if command -v xz >/dev/null; then
    xz -dc .device/programs.tar.xz | tar -C "$bin" -xf -
  else # no xz-utils: Python's lzma reads the same archive
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      .device/programs.tar.xz "$bin"
  fi || { echo "cannot unpack .device/programs.tar.xz"; exit 1; }
}

machine() {
  date -u
  uname -srm
  echo "cores: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  git log -1 --format='commit %h %s' 2>/dev/null || true
  echo "backend: $backend, quick: $quick"
}

# The convnet (Keras' MNIST convnet, batch 128) for 2 epochs on the adapter; quick: 1,280
# samples, 1 epoch.
convnet_run() {
  bin=target/device-run
  local dir
  dir=$(mktemp -d)
  local args=(train --model convnet --adapter "$backend" --epochs 2 --out-dir "$dir/run")
  [ "$quick" = 1 ] && args+=(--train-limit 1280 --epochs 1)
  echo "\$ mnist-gpu ${args[*]}"
  "$bin/mnist-gpu" "${args[@]}" 2>&1
}

# Whether PyTorch with CUDA is installed (else says it skips).
have_torch_cuda() {
  python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && return 0
  echo "no PyTorch with CUDA here: skipped"
  return 1
}

# The same convnet in PyTorch on CUDA, where PyTorch is installed.
pytorch_convnet() {
  have_torch_cuda || return 0
  python3 benches/reference/pytorch_convnet.py --device cuda --epochs 2
}

# The MLPs in PyTorch on CUDA: the default model at batch 32 and 512, and the 4096-wide
# one at 512 (the first epoch of each warms up).
pytorch_mlp() {
  have_torch_cuda || return 0
  local mlp=benches/reference/pytorch_mnist.py
  python3 "$mlp" --device cuda --batch-size 32 --epochs 2
  python3 "$mlp" --device cuda --batch-size 512 --epochs 3
  python3 "$mlp" --device cuda --batch-size 512 --epochs 3 --hidden 4096,4096
}

# The 4096-wide MLP at batch 512 on the adapter, where a GEMM that feeds the chip pays;
# quick: 1 epoch of 1,024 samples (lavapipe does about 10 GFLOP/s, and a sample costs
# 0.12 GFLOP: 13 s there).
big_run() {
  bin=target/device-run
  local dir
  dir=$(mktemp -d)
  local args=(train --adapter "$backend" --hidden 4096,4096 --batch-size 512 --epochs 3 --out-dir "$dir/run")
  [ "$quick" = 1 ] && args+=(--train-limit 1024 --test-limit 512 --epochs 1)
  echo "\$ mnist-gpu ${args[*]}"
  "$bin/mnist-gpu" "${args[@]}" 2>&1
}

train_run() {
  bin=target/device-run
  local dir
  dir=$(mktemp -d)
  local args=(train --adapter "$backend" --out-dir "$dir/run")
  [ "$quick" = 1 ] && args+=(--train-limit 3000 --epochs 2)
  echo "\$ mnist-gpu ${args[*]}"
  "$bin/mnist-gpu" "${args[@]}" 2>&1
  local status=$?
  echo "--- metrics.jsonl"
  cat "$dir/run/metrics.jsonl" 2>/dev/null
  return $status
}

# wgpu's GL backend on the same GPU: its adapters, and one short epoch (the H200 once
# failed here with "Parent device is lost" while opening the device).
gl_run() {
  bin=target/device-run
  local dir
  dir=$(mktemp -d)
  "$bin/mnist-gpu" adapters --backend gl 2>&1
  local args=(train --backend gl --train-limit 3000 --test-limit 1000 --epochs 1 --out-dir "$dir/run")
  echo "\$ mnist-gpu ${args[*]}"
  "$bin/mnist-gpu" "${args[@]}" 2>&1
}

run_all() {
  local out_dir=${OUT:-target}
  mkdir -p "$out_dir"
  local results=$out_dir/device-results.txt
  exec > >(tee "$results") 2>&1
  local tee_pid=$!
  section machine
  machine
  section loader
  loader
  find_programs
  part "adapters" 20 "$bin/mnist-gpu" adapters
  # The agreement tests on the hardware adapter only (CI set: a missing adapter fails).
  part "gpu_agreement ($backend)" 80 env CI=1 MNIST_GPU_TEST_BACKENDS="$backend" \
    "$bin/gpu_agreement" --test-threads=1
  part "fusions ($backend)" 40 env CI=1 MNIST_GPU_TEST_BACKENDS="$backend" \
    "$bin/fusions" --test-threads=1
  local bench_env=(MNIST_GPU_BENCH_BACKENDS="$backend")
  [ "$quick" = 1 ] && bench_env+=(MNIST_GPU_BENCH_SOFT_SAMPLES=1000 MNIST_GPU_BENCH_REPS=1)
  if [ -x "$bin/epoch-baseline" ]; then
    part "epoch bench (baseline)" 120 env "${bench_env[@]}" "$bin/epoch-baseline" --bench
  fi
  part "epoch bench" 80 env "${bench_env[@]}" "$bin/epoch" --bench
  part "kernels bench" 90 env "${bench_env[@]}" "$bin/kernels" --bench
  part "train --adapter $backend" 50 bash "$0" train
  part "--hidden 4096,4096 b512" 40 bash "$0" big
  part "convnet --adapter $backend" 60 bash "$0" convnet
  part "pytorch convnet (cuda)" 40 bash "$0" pytorch-convnet
  part "pytorch mlp (cuda)" 50 bash "$0" pytorch-mlp
  part "train --backend gl" 40 bash "$0" gl
  section summary
  printf '%s\n' "${summary[@]}"
  echo "results: $results"
  exec >&- 2>&-
  wait "$tee_pid"
}

case "${1:-}" in
  pack) pack ;;
  train) train_run ;; # one part of the run, in its own process for `timeout`
  convnet) convnet_run ;;
  pytorch-convnet) pytorch_convnet ;;
  pytorch-mlp) pytorch_mlp ;;
  big) big_run ;;
  gl) gl_run ;;
  "") run_all ;;
  *) echo "usage: benches/device.sh [pack]" >&2; exit 2 ;;
esac
