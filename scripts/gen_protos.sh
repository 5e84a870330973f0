#!/usr/bin/env bash
# Generates Python code (+ .pyi stubs) for every proto under protos/ into services/tollway/,
# and the descriptor set Envoy's gRPC-JSON transcoder reads. Generated files are not committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GOOGLEAPIS=$("$PY" -c 'import google.api.annotations_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])')
out=build/protos
rm -rf "$out/py" && mkdir -p "$out/py" build/googleapis/google/api
# buf resolves google/api imports from this copy, as the BSR cannot be reached.
cp "$GOOGLEAPIS"/google/api/{annotations,http}.proto build/googleapis/google/api/
# google.rpc.Status: a job's `error` (tollway.jobs.v1, AIP-151).
mkdir -p build/googleapis/google/rpc && cp "$GOOGLEAPIS"/google/rpc/status.proto build/googleapis/google/rpc/
mapfile -t files < <(cd protos && find tollway -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I protos -I "$GOOGLEAPIS" \
  --python_out="$out/py" --pyi_out="$out/py" --grpc_python_out="$out/py" "${files[@]}"
# error_details.proto lets the transcoder print google.rpc details (RetryInfo, BadRequest...).
"$PY" -m grpc_tools.protoc -I protos -I "$GOOGLEAPIS" --include_imports --include_source_info \
  --descriptor_set_out="$out/tollway.pb" "${files[@]}" google/rpc/error_details.proto
# Proto path == import path: build/protos/py/tollway/<svc>/v1 -> services/tollway/<svc>/v1.
for d in "$out"/py/tollway/*/v1; do
  svc=$(basename "$(dirname "$d")")
  rm -rf "services/tollway/$svc/v1" && mkdir -p "services/tollway/$svc" && cp -r "$d" "services/tollway/$svc/v1"
  touch "services/tollway/$svc/v1/__init__.py"
  [ -f "services/tollway/$svc/__init__.py" ] || touch "services/tollway/$svc/__init__.py"
done
echo "protos: ${#files[@]} files -> services/tollway/*/v1, $out/tollway.pb"
