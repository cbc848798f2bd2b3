#!/usr/bin/env bash
# The deployment check: renders k8s/ and k8s/monitoring/ with `kubectl kustomize` and
# validates every object offline, in strict mode, with kubernetes-validate (pinned
# below, in a venv under .local/), then checks the Prometheus Operator objects, the
# prometheus-adapter rule, docker-compose.yml and the Dockerfile (scripts/check-k8s.py
# says what exactly), and the PodMonitor and PrometheusRule against the Prometheus
# Operator's CRD schemas (scripts/check-crds.mjs). Installs what it needs when missing;
# idempotent.
#
# Without kubectl (and no Debian package to install it from) each manifest file is
# validated on its own and the output says that rendering was skipped. Without Docker's
# compose plugin (or the older docker-compose) compose's own check is skipped, and said
# so; the structural check of docker-compose.yml runs either way.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

PINS=(kubernetes-validate==1.37.0 PyYAML==6.0.4 jsonschema==4.26.0)
VENV="$ROOT/.local/k8s-venv"
STAMP="$VENV/.pins"

have python3 || apt_install python3
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${PINS[*]}" ]; then
  say "installing ${PINS[*]} into .local/k8s-venv"
  rm -rf "$VENV"
  mkdir -p "$ROOT/.local"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap separately.
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
  printf '%s' "${PINS[*]}" >"$STAMP"
fi

if ! have kubectl; then
  # Debian's kubectl brings kustomize along (`kubectl kustomize`); there is no
  # separate kustomize package. Not every release has it: then rendering is skipped.
  if have apt-cache && can_root; then
    (apt_install kubectl) || say "no kubectl package could be installed"
  fi
fi
if have kubectl; then
  say "kubectl $(kubectl version --client 2>/dev/null | head -n 1 | sed 's/Client Version: //')"
fi

# Parsing and interpolating the compose file needs no Docker engine.
if have docker && docker compose version >/dev/null 2>&1; then
  say "docker compose config"
  docker compose -f "$ROOT/docker-compose.yml" config --quiet
elif have docker-compose; then
  say "docker-compose config ($(docker-compose version --short 2>/dev/null || echo '?'))"
  docker-compose -f "$ROOT/docker-compose.yml" config --quiet
else
  say "neither \`docker compose\` nor docker-compose is installed: compose's own check skipped (structural check only)"
fi

# The Prometheus Operator objects against the CRDs' own schemas (pinned in
# package.json): the Python check writes them out, scripts/check-crds.mjs validates.
npm_deps @kubernetes-models/prometheus-operator
mkdir -p "$ROOT/.local"
CRDS="$ROOT/.local/k8s-crds.json"
rm -f "$CRDS"
SURGE_CRD_DUMP="$CRDS" "$VENV/bin/python" "$ROOT/scripts/check-k8s.py"
node "$ROOT/scripts/check-crds.mjs" "$CRDS"
