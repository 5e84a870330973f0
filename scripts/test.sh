#!/usr/bin/env bash
# Runs the test suite, then stops anything the tests started, even if pytest failed or was killed.
set -uo pipefail
cd "$(dirname "$0")/.."
export TOLLWAY_TEST_RUN_DIR=${TOLLWAY_TEST_RUN_DIR:-$(mktemp -d /tmp/tollway-test-XXXXXX)}
cleanup() {
  # The launcher records every child as "PID START_TICKS NAME" (fixtures: "PID"), and `tollway up`
  # itself too; kill whatever is still alive. A launcher left running may restart a child in the
  # moment before our SIGTERM reaches it; the restarted child is appended to the same file, so
  # look again until a pass finds nothing alive (at most 5 passes: a zombie still "answers" kill).
  for pass in 1 2 3 4 5; do
    killed=0
    while read -r pid _; do
      kill "$pid" 2>/dev/null && echo "stopped leftover process $pid" && killed=1
    done < <(find "$TOLLWAY_TEST_RUN_DIR" -name pids -type f -exec cat {} + 2>/dev/null)
    [ $killed -eq 0 ] && break
    sleep 0.5
  done
}
trap cleanup EXIT
.venv/bin/python -m pytest -q -p no:cacheprovider "${@:-tests}"
rc=$?
# pytest exits 5 when it collected no test: that is a failure here.
[ $rc -eq 5 ] && echo "no test ran" >&2
exit $rc
