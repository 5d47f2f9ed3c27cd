#!/bin/sh
# Random passwords for compose.yaml: secrets/ (read by Redis and PostgreSQL) and secrets.env (the URLs orch's
# services read, with the same passwords in them). Both are git-ignored. Existing files are kept: delete them to
# make new ones (and the volumes, whose data was set up with the old passwords).
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets workspace
# the workers run as uid 10001 (deploy/Dockerfile) and write plans' workdirs under ./workspace
if [ "$(id -u)" = 0 ]; then chown 10001:10001 workspace; else echo "as root: chown 10001:10001 $(pwd)/workspace"; fi
secret() { [ -s "secrets/$1" ] || od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "secrets/$1"; cat "secrets/$1"; }
redis=$(secret redis-password)
postgres=$(secret postgres-password)
readonly_pw=$(secret postgres-readonly-password)
if [ -e secrets.env ]; then
  echo "secrets.env exists: kept"
  exit 0
fi
flower=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
cat > secrets.env <<ENV
ORCH_DATABASE_URL=postgresql://orch:${postgres}@postgres:5432/orch
ORCH_READONLY_DATABASE_URL=postgresql://orch_readonly:${readonly_pw}@postgres:5432/orch
ORCH_BROKER_URL=redis://:${redis}@redis:6379/0
ORCH_FLOWER_AUTH=admin:${flower}
# The workers' key for the claude-code and anthropic executors (shell and python tasks need none):
# ANTHROPIC_API_KEY=
ENV
echo "wrote secrets.env and secrets/ (Flower: user admin, its password is in secrets.env)"
