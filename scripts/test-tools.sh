#!/usr/bin/env bash
# Tools the test suite drives besides PostgreSQL and Redis (scripts/services.sh):
# nginx, for the tests that run nodes behind a load balancer, python3, for the
# architecture check, and its venv module, for the pinned Schemathesis
# (scripts/schemathesis.sh installs it under .local/), and openssl, which makes the TLS
# tests' certificates; plus what the build needs (scripts/build-deps.sh). Installs
# Debian's packages when they are missing; idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
have python3 || apt_install python3
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
[ -x /usr/sbin/nginx ] || have nginx || apt_install nginx-light
have openssl || apt_install openssl
bash "$ROOT/scripts/build-deps.sh"
