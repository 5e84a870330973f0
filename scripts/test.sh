#!/usr/bin/env bash
# Runs the test suite, then stops anything the tests started, even if pytest failed or was killed.
set -uo pipefail
cd "$(dirname "$0")/.."
export TOLLWAY_TEST_RUN_DIR=${TOLLWAY_TEST_RUN_DIR:-$(mktemp -d /tmp/tollway-test-XXXXXX)}
cleanup() {
  # The launcher records every child's PID; kill whatever is still alive.
  find "$TOLLWAY_TEST_RUN_DIR" -name pids -type f -exec cat {} + 2>/dev/null | while read -r pid; do
    kill "$pid" 2>/dev/null && echo "stopped leftover process $pid"
  done
}
trap cleanup EXIT
.venv/bin/python -m pytest -q -p no:cacheprovider "${@:-tests}"
rc=$?
# pytest exits 5 when it collected no test: that is a failure here.
[ $rc -eq 5 ] && echo "no test ran" >&2
exit $rc
