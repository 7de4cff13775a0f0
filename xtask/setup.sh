#!/usr/bin/env bash
# Installs what building and testing the load balancer needs on a fresh machine.
# Idempotent: every step checks first, so a second run does nothing.
# Called by `cargo xtask setup`, and by lb-daemon's build.rs when bpf-linker is missing.
set -euo pipefail

NIGHTLY="${AYA_EBPF_TOOLCHAIN:-nightly-2026-10-29}"
PREFIX="${LB_TOOLCHAIN_DIR:-$HOME/.cache/lb-toolchain}"
APT_PACKAGES="nginx curl wrk iproute2 iptables bpftool prometheus chromium"
log() { echo "setup: $*" >&2; }

# 1. The dated nightly with rust-src: the eBPF crate is built with -Z build-std=core.
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  log "installing $NIGHTLY"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
elif ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to $NIGHTLY"
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

# 2. bpf-linker, linked against that nightly's own libLLVM (same LLVM major as rustc emits).
SYSROOT=$(rustup run "$NIGHTLY" rustc --print sysroot)
LLVM_SO=$(ls "$SYSROOT"/lib/libLLVM.so.* | head -n1)   # the real .so; libLLVM-NN-*.so is a linker script
MAJOR=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
mkdir -p "$PREFIX/lib"
ln -sf "$LLVM_SO" "$PREFIX/lib/libLLVM.so"
ln -sf "$LLVM_SO" "$PREFIX/lib/$(basename "$LLVM_SO")"
STAMP="$PREFIX/bpf-linker.llvm"
if [ ! -x "$PREFIX/bin/bpf-linker" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$LLVM_SO" ] \
   || ! "$PREFIX/bin/bpf-linker" --version >/dev/null 2>&1; then
  log "building bpf-linker against LLVM $MAJOR ($LLVM_SO)"
  LLVM_PREFIX="$PREFIX" cargo install bpf-linker --locked --force --no-default-features \
    --features "llvm-$MAJOR" --root "$PREFIX"
  echo "$LLVM_SO" > "$STAMP"
fi

# 3. System tools the demo and the tests drive (real nginx backends, curl/wrk clients).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

# 4. bpffs, for pinned maps.
if [ "$(id -u)" = 0 ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
