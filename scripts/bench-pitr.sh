# shellcheck shell=bash
# Point-in-time recovery against pgBackRest (performance.md: P1-P4, M2), on one
# throwaway cluster holding the bench data, both tools writing to the same local
# disk: pgBackRest (posix repository, zst level 3, process-max 2, aes-256-cbc)
# and strata (zstd:3, AES-256-GCM). Sourced by scripts/bench (BENCH_ONLY=P runs
# only this); uses its RUN_DIR, RUNS, STRATA, timed, median and ratio.

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
is_root() { [ "$(id -u)" = 0 ]; }
# The server's user runs every server-side command (and keeps the environment).
as_pg() { if is_root; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }
AS_PG=""
if is_root; then AS_PG="setpriv --reuid=postgres --regid=postgres --init-groups"; fi

bench_pitr() {
  ensure_deb_tool pgbackrest pgbackrest
  local P; P=$(mktemp -d /tmp/strata-pitr.XXXXXX)
  chmod 755 "$P"
  # shellcheck disable=SC2034 # scripts/bench removes it when interrupted
  PITR_DIR=$P
  local data=$P/data port; port=$(free_port)
  is_root && chown postgres: "$P"
  as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$P'
wal_level = replica
archive_mode = on
archive_command = '$P/archive-pgbackrest-strata.sh %p'
max_wal_size = 4GB
shared_buffers = 256MB
CONF
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' >"$data/pg_hba.conf"
  # What archive_command does is switched by rewriting $P/archive.mode. (The
  # script's name holds "pgbackrest": pgBackRest refuses to back up a server
  # whose archive_command does not mention it.)
  cat >"$P/archive-pgbackrest-strata.sh" <<SH
#!/bin/sh
case \$(cat $P/archive.mode) in
  discard) exit 0 ;;
  spool) cp "\$1" $P/spool/ ;;
  both) pgbackrest --config=$P/pgbackrest.conf --stanza=bench archive-push "\$1" && $STRATA -c $P/strata.yaml wal-push pitr "\$1" ;;
  strata) exec $STRATA -c $P/strata.yaml wal-push pitr "\$1" ;;
  strata_s3) exec $STRATA -c $P/strata.yaml wal-push pitr_s3 "\$1" ;;
esac
SH
  chmod 755 "$P/archive-pgbackrest-strata.sh"
  mkdir -p "$P/spool" "$P/pgbr" "$P/strata-repo"
  echo discard >"$P/archive.mode"
  "$STRATA" keygen --out "$P/k1.key" >/dev/null
  cat >"$P/pgbackrest.conf" <<CONF
[global]
repo1-path=$P/pgbr/repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 24 /dev/urandom | base64)
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-path=$P/pgbr
lock-path=$P/pgbr
log-level-console=warn
log-level-file=off

[bench]
pg1-path=$data
pg1-port=$port
pg1-socket-path=$P
CONF
  local url="postgres://postgres@127.0.0.1:$port/postgres"
  cat >"$P/strata.yaml" <<YAML
timezone: UTC
http: { listen: "127.0.0.1:$(free_port)" }
encryption: { active: k1, keys: { k1: $P/k1.key } }
targets:
  local: { kind: local, path: $P/strata-repo }
  garage: { kind: s3, bucket: strata-bench, region: garage, endpoint: "$STRATA_TEST_GARAGE", path_style: true, server_side_encryption: none, prefix: pitr }
jobs:
  pitr: { kind: physical, database_url: "$url", targets: [local], compression: "zstd:3" }
  pitr_s3: { kind: physical, database_url: "$url", targets: [garage], compression: "zstd:3" }
  stream: { kind: physical, database_url: "$url", targets: [local], compression: "zstd:3", wal: { source: stream, directory: $P/stream } }
YAML
  is_root && chown -R postgres: "$P"
  as_pg "$PGBIN/pg_ctl" -D "$data" -l "$P/server.log" -w start >/dev/null
  local SQL=("$PGBIN/psql" -X -q -At -h "$P" -p "$port" -U postgres -d postgres)
  echo "loading the bench data into a throwaway cluster on port $port" >&2
  "${SQL[@]}" -v scale=1 -f scripts/bench-db.sql >/dev/null
  "${SQL[@]}" -c CHECKPOINT
  echo "cluster: $("${SQL[@]}" -c "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")" >&2
  local BR=(pgbackrest "--config=$P/pgbackrest.conf" --stanza=bench)
  as_pg "${BR[@]}" stanza-create >/dev/null
  echo both >"$P/archive.mode"
  "${SQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null

  # P1: base backups, alternating.
  local p1_strata=() p1_pgbr=()
  for _ in $(seq "$RUNS"); do
    p1_strata+=("$(timed "$AS_PG $STRATA -c $P/strata.yaml backup pitr")")
    p1_pgbr+=("$(timed "$AS_PG ${BR[*]} --type=full backup")")
  done
  T[p1_strata]=$(printf '%s\n' "${p1_strata[@]}" | median)
  T[p1_pgbr]=$(printf '%s\n' "${p1_pgbr[@]}" | median)
  printf '%-22s %8.2f s   (runs: %s)\n' "strata base backup" "${T[p1_strata]}" "${p1_strata[*]}"
  printf '%-22s %8.2f s   (runs: %s)\n' "pgbackrest full" "${T[p1_pgbr]}" "${p1_pgbr[*]}"
  /usr/bin/time -f %M -o "$P/m" $AS_PG "$STRATA" -c "$P/strata.yaml" backup pitr >/dev/null
  M2_BASE=$(( $(cat "$P/m") / 1024 ))

  # P2: restore, then recovery to consistency and promotion, alternating.
  local rport; rport=$(free_port)
  local restored=$P/restored
  stop_restored() {
    as_pg "$PGBIN/pg_ctl" -D "$restored" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$restored"
  }
  local promote="until $PGBIN/psql -X -At -h 127.0.0.1 -p $rport -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null | grep -q f; do sleep 0.05; done"
  local p2_strata=() p2_pgbr=()
  for _ in $(seq "$RUNS"); do
    stop_restored
    p2_strata+=("$(timed "$AS_PG $STRATA -c $P/strata.yaml restore pitr --into-datadir $restored --to immediate --start --port $rport")")
    stop_restored
    p2_pgbr+=("$(timed "$AS_PG ${BR[*]} --pg1-path=$restored --type=immediate --target-action=promote --archive-mode=off restore && $AS_PG $PGBIN/pg_ctl -D $restored -l $P/restored.log -o '-p $rport -k $P' start >/dev/null && $promote")")
  done
  stop_restored
  T[p2_strata]=$(printf '%s\n' "${p2_strata[@]}" | median)
  T[p2_pgbr]=$(printf '%s\n' "${p2_pgbr[@]}" | median)
  printf '%-22s %8.2f s   (runs: %s)\n' "strata restore+recover" "${T[p2_strata]}" "${p2_strata[*]}"
  printf '%-22s %8.2f s   (runs: %s)\n' "pgbackrest restore+rec" "${T[p2_pgbr]}" "${p2_pgbr[*]}"

  # P3: one 16 MiB segment each, pushed by hand; the server spools them meanwhile.
  echo spool >"$P/archive.mode"
  local p3_strata=() p3_pgbr=() seg
  for i in $(seq "$RUNS"); do
    seg=$("${SQL[@]}" -c "CREATE TABLE IF NOT EXISTS p3 (x text); INSERT INTO p3 SELECT md5(g::text) FROM generate_series(1, 100000) g; SELECT pg_walfile_name(pg_switch_wal())")
    until [ -f "$P/spool/$seg" ]; do sleep 0.1; done
    if [ $((i % 2)) = 1 ]; then
      p3_strata+=("$(timed "$AS_PG $STRATA -c $P/strata.yaml wal-push pitr $P/spool/$seg")")
      p3_pgbr+=("$(timed "$AS_PG ${BR[*]} archive-push $P/spool/$seg")")
    else
      p3_pgbr+=("$(timed "$AS_PG ${BR[*]} archive-push $P/spool/$seg")")
      p3_strata+=("$(timed "$AS_PG $STRATA -c $P/strata.yaml wal-push pitr $P/spool/$seg")")
    fi
  done
  seg=$("${SQL[@]}" -c "INSERT INTO p3 SELECT md5(g::text) FROM generate_series(1, 100000) g; SELECT pg_walfile_name(pg_switch_wal())")
  until [ -f "$P/spool/$seg" ]; do sleep 0.1; done
  /usr/bin/time -f %M -o "$P/m" $AS_PG "$STRATA" -c "$P/strata.yaml" wal-push pitr "$P/spool/$seg"
  M2_PUSH=$(( $(cat "$P/m") / 1024 ))
  T[p3_strata]=$(printf '%s\n' "${p3_strata[@]}" | median)
  T[p3_pgbr]=$(printf '%s\n' "${p3_pgbr[@]}" | median)
  printf '%-22s %8.3f s   (runs: %s)\n' "strata wal-push" "${T[p3_strata]}" "${p3_strata[*]}"
  printf '%-22s %8.3f s   (runs: %s)\n' "pgbackrest archive-push" "${T[p3_pgbr]}" "${p3_pgbr[*]}"

  # P3: 60 s of pgbench; no .ready file may then be older than 10 s.
  local PGB=("$PGBIN/pgbench" -h "$P" -p "$port" -U postgres)
  "${PGB[@]}" -i -q -s 20 postgres >/dev/null 2>&1
  lag() { # lag MODE: the oldest .ready file's age after 60 s of pgbench
    echo "$1" >"$P/archive.mode"
    "${SQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
    "${PGB[@]}" -n -T 60 -c 2 -j 2 postgres >"$P/pgbench.log" 2>&1
    local tps; tps=$(grep -oE 'tps = [0-9.]+' "$P/pgbench.log" | head -1)
    local oldest; oldest=$(find "$data/pg_wal/archive_status" -name '*.ready' -printf '%T@\n' | sort -n | head -1)
    local age=0
    [ -n "$oldest" ] && age=$(python3 -c "import time; print(round(time.time() - $oldest, 1))")
    local wal; wal=$("${SQL[@]}" -c "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
    echo "$1: pgbench $tps; $wal segment(s) waiting, the oldest ${age} s" >&2
    echo "$age"
  }
  LAG_LOCAL=$(lag strata)
  LAG_S3=$(lag strata_s3)

  # P4: from commit to recoverable from the archive. archive_command with
  # archive_timeout = 10 s, then the daemon's streaming source (1 s interval).
  echo strata >"$P/archive.mode"
  "${SQL[@]}" -c "ALTER SYSTEM SET archive_timeout = 10" -c "SELECT pg_reload_conf()" >/dev/null
  "${SQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
  "${SQL[@]}" -c "CREATE TABLE IF NOT EXISTS p4 (id int, at timestamptz default now())"
  sleep 12
  reached() { # reached JOB LSN: the archive holds WAL up to LSN (the bytes before it are written)
    local seg off
    seg=$("${SQL[@]}" -c "SELECT pg_walfile_name('$2')")
    off=$("${SQL[@]}" -c "SELECT ('$2'::pg_lsn - '0/0'::pg_lsn)::numeric % 16777216")
    rm -f "$P/fetched"
    "$STRATA" -c "$P/strata.yaml" wal-fetch "$1" "$seg" "$P/fetched" 2>/dev/null || return 1
    python3 -c "import sys; b=open('$P/fetched','rb').read(); o=$off; sys.exit(0 if any(b[max(0,o-64):o]) else 1)"
  }
  rpo() { # rpo JOB: seconds from a commit until the archive holds it
    local lsn t0
    lsn=$("${SQL[@]}" -c "INSERT INTO p4 (id) VALUES (1)" -c "SELECT pg_current_wal_insert_lsn()")
    t0=$(date +%s.%N)
    until reached "$1" "$lsn"; do sleep 0.2; done
    python3 -c "print(round($(date +%s.%N) - $t0, 2))"
  }
  local p4_archive=() p4_stream=()
  for _ in $(seq "$RUNS"); do p4_archive+=("$(rpo pitr)"); sleep 3; done
  "$STRATA" -c "$P/strata.yaml" run 2>"$P/daemon.log" &
  local daemon=$!
  until "${SQL[@]}" -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'strata_stream'" | grep -q t; do sleep 0.2; done
  "$STRATA" -c "$P/strata.yaml" backup stream >/dev/null
  for _ in $(seq "$RUNS"); do p4_stream+=("$(rpo stream)"); sleep 2; done
  # Proof: the last committed row comes back from the streamed archive.
  local rows; rows=$("${SQL[@]}" -c "SELECT count(*) FROM p4")
  as_pg "$STRATA" -c "$P/strata.yaml" restore stream --into-datadir "$restored" --to latest --start --port "$rport" >/dev/null
  local back; back=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$rport" -U postgres -d postgres -c "SELECT count(*) FROM p4")
  stop_restored
  kill -TERM "$daemon"; wait "$daemon" || true
  as_pg "$PGBIN/pg_ctl" -D "$data" -m fast stop >/dev/null
  T[p4_archive]=$(printf '%s\n' "${p4_archive[@]}" | median)
  T[p4_stream]=$(printf '%s\n' "${p4_stream[@]}" | median)
  echo "commit to archive, archive_command (archive_timeout 10 s): ${p4_archive[*]} s"
  echo "commit to archive, streaming (upload_interval 1 s): ${p4_stream[*]} s; restored from it: $back of $rows rows"
  [ "$back" = "$rows" ] || { echo "P4: the streamed archive lost committed rows" >&2; return 1; }
  rm -rf "$P"
}

report_pitr() {
  echo "P1 base backup / pgbackrest full   = $(ratio "${T[p1_strata]}" "${T[p1_pgbr]}")  (goal <= 0.7)"
  echo "P2 restore+recovery / pgbackrest   = $(ratio "${T[p2_strata]}" "${T[p2_pgbr]}")  (goal <= 0.8)"
  echo "P3 wal-push / archive-push         = $(ratio "${T[p3_strata]}" "${T[p3_pgbr]}")  (goal <= 1.0); oldest .ready after 60 s of pgbench: ${LAG_LOCAL} s local, ${LAG_S3} s Garage (goal <= 10 s)"
  echo "P4 commit to archive               = ${T[p4_archive]} s with archive_command (goal <= archive_timeout 10 + 5 s), ${T[p4_stream]} s streaming (goal <= 5 s)"
  echo "M2 peak RSS                        = wal-push $M2_PUSH MiB, base backup $M2_BASE MiB  (goal <= 40 / 80 MiB)"
}
