#!/usr/bin/env bash
# What building surge needs besides Rust: TLS to PostgreSQL and Redis comes from the
# system's OpenSSL (native-tls), found through pkg-config. Installs Debian's packages
# when they are missing; idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
have pkg-config || apt_install pkg-config
pkg-config --exists openssl || apt_install libssl-dev
