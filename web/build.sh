#!/usr/bin/env bash
# Build the page into web/dist/: the crate for wasm32-unknown-unknown (src/web/ holds its
# entry points), wasm-bindgen's JS glue (--target web), the HTML/JS shell and the built-in
# MNIST .gz files the page downloads from its own origin.
#
# Installs what is missing: the wasm32 target (rustup) and wasm-bindgen-cli at exactly the
# wasm-bindgen version in Cargo.lock (web/wasm-bindgen.sh says where and how).
# WASM_TARGET_DIR (default TARGET/wasm, TARGET being CARGO_TARGET_DIR or target/) keeps
# the wasm build apart from the native one; WEB_DIST (default web/dist) is where the site
# goes (the tests build it under target/).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v rustup >/dev/null || {
  echo "web/build.sh: rustup is not on PATH; the page needs Rust's wasm32-unknown-unknown target (install Rust with https://rustup.rs)" >&2
  exit 1
}
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
wasm_bindgen=$(web/wasm-bindgen.sh)

target_dir=${WASM_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/wasm}
# No debug info and symbols in the page's module (size); the same optimised code otherwise.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo rustc --quiet --lib --release --target wasm32-unknown-unknown \
  --crate-type cdylib --target-dir "$target_dir"

dist=${WEB_DIST:-web/dist}
# Replace an earlier build, but never a folder this script did not make.
if [ -e "$dist" ] && [ -n "$(ls -A "$dist" 2>/dev/null)" ] && [ ! -f "$dist/mnist_gpu_bg.wasm" ]; then
  echo "web/build.sh: $dist holds files this script did not write; choose another WEB_DIST" >&2
  exit 1
fi
rm -rf "$dist"
mkdir -p "$dist/mnist"
"$wasm_bindgen" --target web --no-typescript --out-dir "$dist" \
  "$target_dir/wasm32-unknown-unknown/release/mnist_gpu.wasm"
cp web/index.html web/app.js web/style.css "$dist/"
cp assets/mnist/*.gz "$dist/mnist/"
echo "built $dist ($(stat -c %s "$dist/mnist_gpu_bg.wasm") bytes of wasm)"
