#!/usr/bin/env bash
# Runs the test suite, then stops anything the tests started, even if pytest failed or was killed.
set -uo pipefail
cd "$(dirname "$0")/.."
export TOLLWAY_TEST_RUN_DIR=${TOLLWAY_TEST_RUN_DIR:-$(mktemp -d /tmp/tollway-test-XXXXXX)}
# With PYTHONDONTWRITEBYTECODE set (some shells set it), every pytest process rewrites and compiles
# ~530 modules again (tests, their helpers, pytest plugins: ~7 s of CPU each, four such processes per
# run) and every service start compiles tollway's sources: let them keep their bytecode (__pycache__,
# which git ignores).
unset PYTHONDONTWRITEBYTECODE
passes=()  # the split and cluster passes, which run in the background beside the main one
cleanup() {
  for pid in "${passes[@]}"; do kill "$pid" 2>/dev/null; done
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
# Ctrl-C ends pytest with KeyboardInterrupt (an ordinary exit): end here too, not wait for the background passes.
trap 'exit 130' INT
# Two layouts (docs/architecture.md, "Co-location"): the whole suite runs co-located, as `make run` does;
# beside it, the tests whose requests cross the mesh's hops (edge, OpenAI surface, gateway to budget and
# cache) run again with one process per service. TOLLWAY_TEST_LAYOUT set by the caller runs that layout once.
SPLIT_TESTS=(
  tests/integration/test_edge_http.py tests/integration/test_edge_grpc.py tests/integration/test_edge_envoy.py
  tests/integration/test_openai_compat.py tests/integration/test_gateway_budget.py
  tests/integration/test_gateway_cache.py
)
# The stores again on a real 3-master Redis Cluster (issue 20; tests/support/redis_cluster.py).
CLUSTER_TESTS=(
  tests/integration/test_cache_service.py tests/integration/test_budget_service.py
  tests/integration/test_router_breakers.py tests/integration/test_gateway_store_redis.py
  tests/integration/test_embedding_store_redis.py tests/integration/test_budget_leases.py
)
both=0
if [ -z "${TOLLWAY_TEST_LAYOUT:-}" ]; then
  case " ${*:-tests} " in *" tests "*|*" tests/ "*|*" tests/integration "*|*" tests/integration/ "*) both=1 ;; esac
  export TOLLWAY_TEST_LAYOUT=colocated
fi
# A whole-suite run uses two pytest workers (pytest-xdist), each taking one test file at a time, so a
# file's module-scoped stacks stay in one process; each worker starts its own session stack. Much of an
# integration test is waiting on other processes, which the other worker uses (docs/benchmarks.md, "Test
# suite time").
# TOLLWAY_TEST_WORKERS=N sets the number for any run (0: no workers, as single-file runs default to).
workers=${TOLLWAY_TEST_WORKERS:-$([ $both -eq 1 ] && echo 2 || echo 0)}
xdist=()
# In collection order (tests/conftest.py puts the longest files first), not xdist's biggest-file-first.
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)
if [ $both -eq 1 ]; then
  # The split and cluster passes share nothing with the main one (each starts its own stack on free
  # ports) and spend most of their time waiting too: they run beside it, each into a file printed at
  # the end, so the whole run takes about as long as the main pass.
  echo "layout: split (${#SPLIT_TESTS[@]} files) and redis: cluster (${#CLUSTER_TESTS[@]} files), in the background"
  TOLLWAY_TEST_LAYOUT=split .venv/bin/python -m pytest -q -p no:cacheprovider "${SPLIT_TESTS[@]}" \
    >"$TOLLWAY_TEST_RUN_DIR/split.out" 2>&1 &
  passes+=($!)
  TOLLWAY_TEST_REDIS=cluster .venv/bin/python -m pytest -q -p no:cacheprovider "${CLUSTER_TESTS[@]}" \
    >"$TOLLWAY_TEST_RUN_DIR/cluster.out" 2>&1 &
  passes+=($!)
fi
echo "layout: $TOLLWAY_TEST_LAYOUT${xdist[*]:+ (workers: $workers)}"
.venv/bin/python -m pytest -q -p no:cacheprovider "${xdist[@]}" "${@:-tests}"
rc=$?
# pytest exits 5 when it collected no test: that is a failure here.
[ $rc -eq 5 ] && echo "no test ran" >&2
if [ $both -eq 1 ]; then
  wait "${passes[0]}"
  split_rc=$?
  wait "${passes[1]}"
  cluster_rc=$?
  passes=()
  echo "layout: split (${#SPLIT_TESTS[@]} files)"
  cat "$TOLLWAY_TEST_RUN_DIR/split.out"
  echo "redis: cluster (${#CLUSTER_TESTS[@]} files)"
  cat "$TOLLWAY_TEST_RUN_DIR/cluster.out"
  [ $rc -eq 0 ] && rc=$split_rc
  [ $rc -eq 0 ] && rc=$cluster_rc
fi
exit $rc
