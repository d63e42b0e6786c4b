#!/usr/bin/env bash
# Sourced by scripts/start and scripts/test-services.sh: starts a local PostgreSQL
# cluster that is installed but stopped, so a newcomer's first command does not
# fail at `createdb`.

# The host and port of a postgres:// URL (defaults 127.0.0.1 and 5432).
pg_url_host() { local r=${1#*://}; r=${r#*@}; r=${r%%/*}; r=${r%%\?*}; r=${r%%:*}; echo "${r:-127.0.0.1}"; }
pg_url_port() { local r=${1#*://}; r=${r#*@}; r=${r%%/*}; r=${r%%\?*}; case $r in *:*) echo "${r##*:}" ;; *) echo 5432 ;; esac; }

# ensure_local_postgres HOST PORT: returns once a server answers there; starts the
# Debian cluster that listens on PORT when it is down.
ensure_local_postgres() {
  local host=$1 port=$2 cluster
  if pg_isready -h "$host" -p "$port" -q 2>/dev/null; then return 0; fi
  case $host in 127.0.0.1|localhost|::1) ;; *)
    echo "PostgreSQL at $host:$port does not answer; start it or point DATABASE_URL at a running server" >&2
    return 1 ;;
  esac
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    echo "no PostgreSQL answers on $host:$port and none is installed here (Debian: apt-get install postgresql)" >&2
    return 1
  fi
  cluster=$(pg_lsclusters -h | awk -v p="$port" '$3 == p { print $1, $2; exit }')
  if [ -z "$cluster" ]; then
    echo "no PostgreSQL cluster on port $port here (pg_lsclusters lists them); start one or set DATABASE_URL" >&2
    return 1
  fi
  echo "starting PostgreSQL cluster $cluster (port $port)" >&2
  local as=()
  if [ "$(id -u)" != 0 ]; then as=(sudo); fi
  # shellcheck disable=SC2086 # "version name"
  "${as[@]}" pg_ctlcluster --skip-systemctl-redirect $cluster start
  local deadline=$((SECONDS + 30))
  until pg_isready -h "$host" -p "$port" -q 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "PostgreSQL on port $port did not start" >&2; return 1; fi
    sleep 0.2
  done
}
