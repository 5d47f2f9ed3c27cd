#!/bin/sh
# The read-only role of the bundled PostgreSQL (postgres.yaml): what the exporter and KEDA connect as. The image's
# entrypoint runs this once, when it creates the data folder, as POSTGRES_USER (orch, the role that runs orch's
# migrations and so owns orch's tables). On a store created before this script existed, or to change the role's
# password, run it by hand; it can run any number of times:
#   kubectl -n orch exec orch-postgres-0 -- /docker-entrypoint-initdb.d/10-readonly-role.sh
# The role may SELECT every table of the schema public, now and later (ALTER DEFAULT PRIVILEGES for the tables
# POSTGRES_USER creates), and nothing else; its transactions are read-only by default too.
# Its password comes from a file (the Secret's POSTGRES_READONLY_PASSWORD), never from argv.
set -eu
role="${POSTGRES_READONLY_USER:-orch_readonly}"
password_file="${POSTGRES_READONLY_PASSWORD_FILE:?POSTGRES_READONLY_PASSWORD_FILE is not set}"
password=$(cat "$password_file")
if [ "${#password}" -lt 16 ]; then
  echo "orch-postgres: POSTGRES_READONLY_PASSWORD (Secret orch-secrets) has ${#password} characters; give at least 16, e.g. openssl rand -hex 24" >&2
  exit 1
fi
unset password
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=role="$role" --set=owner="$POSTGRES_USER" --set=db="$POSTGRES_DB" --set=password_file="$password_file" <<'SQL'
\set password `cat :'password_file'`
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') AS missing \gset
\if :missing
CREATE ROLE :"role" LOGIN PASSWORD :'password';
\else
ALTER ROLE :"role" LOGIN PASSWORD :'password';
\endif
\unset password
ALTER ROLE :"role" SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"db" TO :"role";
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"role";
SQL
echo "orch-postgres: role $role may read the database $POSTGRES_DB (SELECT only)"
