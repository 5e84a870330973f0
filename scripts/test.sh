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
# Two layouts (docs/architecture.md, "Co-location"): the whole suite runs co-located, as `make run` does;
# then the tests whose requests cross the mesh's hops (edge, OpenAI surface, gateway to budget and cache)
# run again with one process per service. TOLLWAY_TEST_LAYOUT set by the caller runs that layout once.
SPLIT_TESTS=(
  tests/integration/test_edge_http.py tests/integration/test_edge_grpc.py tests/integration/test_edge_envoy.py
  tests/integration/test_openai_compat.py tests/integration/test_gateway_budget.py
  tests/integration/test_gateway_cache.py
)
# The stores again on a real 3-master Redis Cluster (issue 20; tests/support/redis_cluster.py).
CLUSTER_TESTS=(
  tests/integration/test_cache_service.py tests/integration/test_budget_service.py
  tests/integration/test_router_breakers.py tests/integration/test_gateway_store_redis.py
  tests/integration/test_embedding_store_redis.py
)
both=0
if [ -z "${TOLLWAY_TEST_LAYOUT:-}" ]; then
  case " ${*:-tests} " in *" tests "*|*" tests/ "*|*" tests/integration "*|*" tests/integration/ "*) both=1 ;; esac
  export TOLLWAY_TEST_LAYOUT=colocated
fi
echo "layout: $TOLLWAY_TEST_LAYOUT"
.venv/bin/python -m pytest -q -p no:cacheprovider "${@:-tests}"
rc=$?
# pytest exits 5 when it collected no test: that is a failure here.
[ $rc -eq 5 ] && echo "no test ran" >&2
if [ $both -eq 1 ]; then
  cleanup
  echo "layout: split (${#SPLIT_TESTS[@]} files)"
  TOLLWAY_TEST_LAYOUT=split .venv/bin/python -m pytest -q -p no:cacheprovider "${SPLIT_TESTS[@]}"
  split_rc=$?
  [ $rc -eq 0 ] && rc=$split_rc
  cleanup
  echo "redis: cluster (${#CLUSTER_TESTS[@]} files)"
  TOLLWAY_TEST_REDIS=cluster .venv/bin/python -m pytest -q -p no:cacheprovider "${CLUSTER_TESTS[@]}"
  cluster_rc=$?
  [ $rc -eq 0 ] && rc=$cluster_rc
fi
exit $rc
