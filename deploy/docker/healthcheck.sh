#!/bin/sh
# Container health: the daemon is alive when /health answers at all. 503 (a job
# past its RPO, state database down) is an alert for people, not a reason for the
# orchestrator to restart a daemon that is working; so only "no answer" fails.
set -eu
url="http://${STRATA_HEALTH_ADDR:-127.0.0.1:9187}/health"
code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$url") || code=000
case "$code" in
  200|503) exit 0 ;;
  *) echo "strata: /health answered $code" >&2; exit 1 ;;
esac
