"""Generates the Envoy config and the k8s manifests from deploy/mesh.yaml.

    python -m tollway.edge --mesh deploy/mesh.yaml --out build/envoy.yaml [--port NAME=PORT ...]
    python -m tollway.edge --mesh deploy/mesh.yaml --k8s-out deploy/k8s
    python -m tollway.edge --mesh deploy/mesh.yaml --prometheus-out deploy/prometheus [--layout split]

Exit status: 0 on success, 2 on a bad mesh file, port override or descriptor set, 1 when
`--validate` finds Envoy rejecting the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from tollway.edge.descriptor import DescriptorSetError, check_descriptor_set
from tollway.edge.envoy_config import build_envoy_config
from tollway.edge.k8s import build_k8s_manifests
from tollway.edge.prometheus import build_prometheus_config, write_prometheus_dir
from tollway.edge.render import envoy_binary, render_envoy_yaml, validate_with_envoy, write_k8s_dir
from tollway.mesh.topology import MeshError, load_mesh, parse_port_overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the generator; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m tollway.edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", type=Path, default=Path("deploy/mesh.yaml"), help="the topology file")
    parser.add_argument("--out", type=Path, help="where to write the Envoy config (YAML)")
    parser.add_argument("--k8s-out", type=Path, help="directory to write the k8s manifests into")
    parser.add_argument(
        "--prometheus-out", type=Path, help="directory to write prometheus.yml into (with the rule files)"
    )
    parser.add_argument(
        "--layout", choices=("colocated", "split"), default="colocated",
        help="the processes Prometheus scrapes: mesh.yaml's groups (colocated, as `tollway up`) or one per service",
    )
    parser.add_argument(
        "--port", action="append", default=[], metavar="NAME=PORT",
        help="override a port: edge, admin, mesh, redis, local_model, <service>, <service>.<i>, <service>.canary",
    )
    parser.add_argument("--descriptor", type=Path, help="use this descriptor set instead of the mesh file's")
    parser.add_argument(
        "--validate", action="store_true", help="run `envoy --mode validate` on the written config",
    )
    args = parser.parse_args(argv)
    if args.out is None and args.k8s_out is None and args.prometheus_out is None:
        parser.error("nothing to do: give --out, --k8s-out and/or --prometheus-out")

    try:
        mesh = load_mesh(args.mesh, ports=parse_port_overrides(args.port))
    except MeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.descriptor is not None:
        mesh = dataclasses.replace(mesh, edge=dataclasses.replace(mesh.edge, descriptor_set=args.descriptor.resolve()))

    if args.k8s_out is not None:
        written = write_k8s_dir(build_k8s_manifests(mesh), args.k8s_out, source=str(args.mesh))
        print(f"wrote {len(written)} manifests to {args.k8s_out}")

    if args.prometheus_out is not None:
        name = "prometheus.yml" if args.layout == "colocated" else f"prometheus-{args.layout}.yml"
        config = build_prometheus_config(mesh, args.layout)
        print(f"wrote {write_prometheus_dir(config, args.prometheus_out, source=str(args.mesh), name=name)}")

    if args.out is not None:
        transcoded = [g for s in mesh.enabled_services if s.public and s.protocol == "grpc" for g in s.grpc_services]
        descriptor = mesh.edge.descriptor_set
        if descriptor.exists():
            try:
                for warning in check_descriptor_set(descriptor, transcoded):
                    print(f"warning: {warning}", file=sys.stderr)
            except DescriptorSetError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        elif transcoded:
            print(f"warning: {descriptor} does not exist yet; Envoy needs it to start (make protos)", file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_envoy_yaml(build_envoy_config(mesh), source=str(args.mesh)), encoding="utf-8")
        print(f"wrote {args.out}")
        if args.validate:
            ok, output = validate_with_envoy(args.out, envoy_binary())
            print(output.strip(), file=sys.stdout if ok else sys.stderr)
            if not ok:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
