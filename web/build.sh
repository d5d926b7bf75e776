#!/usr/bin/env bash
# Build the page into web/dist/: the crate for wasm32-unknown-unknown (src/web/ holds its
# entry points), wasm-bindgen's JS glue (--target web), the HTML/JS shell and the built-in
# MNIST .gz files the page downloads from its own origin.
#
# Installs what is missing: the wasm32 target (rustup) and wasm-bindgen-cli at exactly the
# wasm-bindgen version in Cargo.lock (the glue and the library must match).
# WASM_TARGET_DIR (default target/wasm) keeps the wasm build apart from the native one.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  cargo install --locked wasm-bindgen-cli --version "$version"
fi

target_dir=${WASM_TARGET_DIR:-target/wasm}
# No debug info and symbols in the page's module (size); the same optimised code otherwise.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo rustc --quiet --lib --release --target wasm32-unknown-unknown \
  --crate-type cdylib --target-dir "$target_dir"

dist=web/dist
rm -rf "$dist"
mkdir -p "$dist/mnist"
wasm-bindgen --target web --no-typescript --out-dir "$dist" \
  "$target_dir/wasm32-unknown-unknown/release/mnist_gpu.wasm"
cp web/index.html web/app.js web/style.css "$dist/"
cp assets/mnist/*.gz "$dist/mnist/"
echo "built $dist ($(stat -c %s "$dist/mnist_gpu_bg.wasm") bytes of wasm)"
