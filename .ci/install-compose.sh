#!/usr/bin/env bash
# Install a Compose parser so tests/test_compose.py can validate docker-compose.yml without a Docker engine.
# Idempotent: does nothing when `docker compose` (v2 plugin) or `docker-compose` is already there.
set -euo pipefail
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
docker-compose version --short
