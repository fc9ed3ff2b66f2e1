#!/usr/bin/env bash
# `cargo deny` (licenses, bans, sources: deny.toml; needs no network) and `cargo audit` against the RustSec advisory
# database. Ignored advisories are explained in .cargo/audit.toml (deny.toml lists the same).
#
# Installs cargo-deny 0.20.2 the same way, into $HOME/.cache/weir/tools/cargo-deny, on first use.
#
# Installs cargo-audit into $HOME/.cache/weir/tools on first use (a few minutes) and keeps a clone of the database
# there. Where GitHub cannot be reached and no copy is cached, it says so and skips (exit 0): the audit needs the
# database, the build does not. WEIR_ADVISORY_DB=/path/to/advisory-db uses a local copy.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir/tools}"
DENY="$(command -v cargo-deny || true)"
if [ -z "$DENY" ]; then
  DENY="$TOOLS/cargo-deny/bin/cargo-deny"
  if [ ! -x "$DENY" ]; then
    echo "deny: installing cargo-deny 0.20.2 into $TOOLS/cargo-deny (first run only)"
    CARGO_TARGET_DIR="$TOOLS/cargo-deny-build" cargo install --quiet --locked --root "$TOOLS/cargo-deny" \
      cargo-deny --version 0.20.2
  fi
fi
# cargo-deny reads the metadata of every platform's dependencies (windows-sys, …), which a build on Linux never
# downloads: fetch them first (crates.io only), so that the check itself can stay offline.
cargo fetch --locked --quiet
"$DENY" --offline check licenses bans sources
AUDIT="$(command -v cargo-audit || true)"
if [ -z "$AUDIT" ]; then
  AUDIT="$TOOLS/cargo-audit/bin/cargo-audit"
  if [ ! -x "$AUDIT" ]; then
    echo "audit: installing cargo-audit 0.22.2 into $TOOLS/cargo-audit (first run only)"
    CARGO_TARGET_DIR="$TOOLS/cargo-audit-build" cargo install --quiet --locked --root "$TOOLS/cargo-audit" \
      cargo-audit --version 0.22.2
  fi
fi
DB="${WEIR_ADVISORY_DB:-$TOOLS/advisory-db}"
export GIT_TERMINAL_PROMPT=0
if [ -d "$DB/.git" ]; then
  timeout 60 git -C "$DB" pull --quiet --ff-only 2>/dev/null || echo "audit: could not update $DB; using it as it is"
elif ! timeout 120 git clone --quiet --depth 1 https://github.com/rustsec/advisory-db "$DB" 2>/dev/null; then
  rm -rf "$DB"
  echo "audit: SKIPPED — the advisory database (github.com/rustsec/advisory-db) cannot be reached from here and no"
  echo "       copy is cached; set WEIR_ADVISORY_DB to a local clone to audit offline"
  exit 0
fi
echo "audit: database $(git -C "$DB" log -1 --format='%h of %cs')"
"$AUDIT" audit --db "$DB" --no-fetch --deny yanked
