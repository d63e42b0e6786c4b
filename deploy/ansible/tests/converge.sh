#!/usr/bin/env bash
# Converges the role on this machine, as a real host would see it, inside a
# private mount namespace with overlays on /etc, /usr/local/bin and /var/backups,
# so nothing outside changes. With the shipped production configuration it checks:
#   - the first run installs everything with the owners and modes the role promises;
#   - a second run changes nothing (idempotence);
#   - an invalid configuration fails `strata check` and leaves the installed one as it was.
# systemd does not run here, so the service tasks are skipped (strata_manage_service).
#   deploy/ansible/tests/converge.sh ANSIBLE_BIN_DIR STRATA_BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ansible_bin=$1 strata=$(realpath "$2")

if [ -z "${STRATA_CONVERGE_DIR:-}" ]; then
  if [ "$(id -u)" != 0 ] || ! unshare --mount true 2>/dev/null; then
    echo "converge: needs root and mount namespaces; skipped" >&2
    exit 0
  fi
  work=$(mktemp -d /tmp/strata-converge.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  STRATA_CONVERGE_DIR=$work unshare --mount --propagation private "$0" "$ansible_bin" "$strata"
  exit 0
fi

work=$STRATA_CONVERGE_DIR
for dir in /etc /usr/local/bin /var/backups; do
  layer=$work/layers/${dir//\//_}
  mkdir -p "$layer/upper" "$layer/work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
done

files=$work/files
mkdir -p "$files" "$work/tmp"
"$strata" keygen --out "$files/k1.key" >/dev/null
(umask 077
 head -c 32 /dev/urandom | base64 >"$files/api-token"
 head -c 32 /dev/urandom | base64 >"$files/admin-token")
cat >"$work/vars.yml" <<YAML
strata_binary_src: $strata
strata_config_src: $here/../../config.production.yaml
strata_keys: { k1: $files/k1.key }
strata_secret_files: { api-token: $files/api-token, admin-token: $files/admin-token }
strata_env:
  STRATA_STATE_DATABASE_URL: postgres://strata@state.example.com/strata_state
  PROD_DATABASE_URL: postgres://strata@prod.example.com/app
  PROD_CLUSTER_DATABASE_URL: postgres://strata_repl@prod.example.com/postgres
  STAGING_DATABASE_URL: postgres://strata@staging.example.com/postgres
  DEV_DATABASE_URL: postgres://strata@dev.example.com/app
strata_manage_service: false
YAML
cat >"$work/inventory.ini" <<INI
[strata]
localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3 ansible_become=false
INI

playbook() {
  ANSIBLE_HOME=$work/home ANSIBLE_LOCAL_TEMP=$work/tmp ANSIBLE_REMOTE_TEMP=$work/tmp ANSIBLE_NOCOLOR=1 \
    "$ansible_bin/ansible-playbook" -i "$work/inventory.ini" -e "@$work/vars.yml" "$@" "$here/../site.yml"
}
recap() { grep -A1 '^PLAY RECAP' <<<"$1" | tail -1; }
fail() { echo "converge: $*" >&2; exit 1; }

first=$(playbook) || { echo "$first"; fail "the first run failed"; }
second=$(playbook) || { echo "$second"; fail "the second run failed"; }
recap "$second" | grep -q ' changed=0 ' || { echo "$second"; fail "the second run changed something (not idempotent)"; }

expect() { # expect PATH "OWNER:GROUP MODE"
  local actual; actual=$(stat -c '%U:%G %a' "$1")
  [ "$actual" = "$2" ] || fail "$1 is $actual, expected $2"
}
expect /etc/strata "root:strata 750"
expect /etc/strata/keys "root:strata 750"
expect /etc/strata/keys/k1.key "strata:strata 600"
expect /etc/strata/api-token "strata:strata 600"
expect /etc/strata/admin-token "strata:strata 600"
expect /etc/strata/strata.env "root:root 600"
expect /etc/strata/config.yaml "root:strata 640"
expect /usr/local/bin/strata "root:root 755"
expect /var/backups/strata "strata:strata 700"
expect /etc/systemd/system/strata.service "root:root 644"
cmp -s "$files/k1.key" /etc/strata/keys/k1.key || fail "the installed key differs from its source"
grep -qx 'PROD_DATABASE_URL=postgres://strata@prod.example.com/app' /etc/strata/strata.env \
  || fail "strata.env lacks PROD_DATABASE_URL"
getent passwd strata | grep -q ':/usr/sbin/nologin$' || fail "no strata system user with a nologin shell"

# A configuration strata rejects is never installed.
printf 'jobs:\n  app: { database_url: postgres://x/y, targets: [nowhere] }\n' >"$work/bad.yaml"
before=$(sha256sum </etc/strata/config.yaml)
if bad=$(playbook -e "strata_config_src=$work/bad.yaml"); then
  echo "$bad"; fail "an invalid configuration was accepted"
fi
grep -q "unknown target 'nowhere'" <<<"$bad" || { echo "$bad"; fail "the failed validation does not name the problem"; }
[ "$(sha256sum </etc/strata/config.yaml)" = "$before" ] || fail "the invalid configuration replaced the installed one"
echo "converge: ok (first run: $(recap "$first" | sed -E 's/.*(changed=[0-9]+).*/\1/'), second run: changed=0)"
