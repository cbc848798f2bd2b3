#!/usr/bin/env bash
# The architecture check (scripts/check-architecture.py), installing python3 if the
# machine has none.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
have python3 || apt_install python3
exec python3 "$ROOT/scripts/check-architecture.py"
