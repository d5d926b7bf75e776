#!/usr/bin/env bash
# Prints the path of a wasm-bindgen CLI whose version equals the wasm-bindgen library in
# Cargo.lock (the JS glue it writes must match the library compiled into the module),
# installing one if there is none. Progress goes to stderr; stdout is the path alone.
#
# Where it comes from, in order:
#   1. `wasm-bindgen` on PATH, if it is that version;
#   2. TARGET/tools/wasm-bindgen-VERSION/bin/wasm-bindgen (TARGET: CARGO_TARGET_DIR or
#      target/), installed there by an earlier run;
#   3. `cargo install wasm-bindgen-cli --version VERSION --root TARGET/tools/...`.
#
# Why a root under target/ rather than ~/.cargo/bin: it never replaces a wasm-bindgen of
# another version that the user installed for other projects, and `cargo clean` removes it
# with everything else this project built.
#
# Why `--locked` is tried first and then dropped: `--locked` builds the CLI with the exact
# dependency versions its authors tested, but some package registries do not carry every
# newest version (one such lacked the webpki-roots that wasm-bindgen-cli 0.2.130 locks), and
# then `--locked` can never resolve. Without it cargo picks the newest semver-compatible
# versions the registry has, which builds the same CLI. The resolution failure comes before
# any compiling, so trying `--locked` first costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$version" ] || { echo "web/wasm-bindgen.sh: no wasm-bindgen in Cargo.lock" >&2; exit 1; }

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" = "$version" ]; then
  command -v wasm-bindgen
  exit 0
fi

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
root=$target_dir/tools/wasm-bindgen-$version
installed=$root/bin/wasm-bindgen
if [ "$("$installed" --version 2>/dev/null | awk '{print $2}')" = "$version" ]; then
  echo "$installed"
  exit 0
fi

command -v cargo >/dev/null || { echo "web/wasm-bindgen.sh: cargo is not on PATH (install Rust: https://rustup.rs)" >&2; exit 1; }
echo "installing wasm-bindgen-cli $version into $root (a few minutes, once)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! cargo install --quiet --locked wasm-bindgen-cli --version "$version" --root "$root" 2>"$log"; then
  if grep -q "failed to select a version" "$log"; then
    echo "the registry lacks a version wasm-bindgen-cli's lock file names; installing without --locked" >&2
    cargo install --quiet wasm-bindgen-cli --version "$version" --root "$root" >&2
  else
    cat "$log" >&2
    echo "web/wasm-bindgen.sh: cargo install wasm-bindgen-cli $version failed (above)" >&2
    exit 1
  fi
fi
"$installed" --version >&2
echo "$installed"
