"""The Envoy edge and the k8s manifests, generated from deploy/mesh.yaml.

Command line: `python -m tollway.edge --mesh deploy/mesh.yaml --out build/envoy.yaml [--k8s-out deploy/k8s]`.
"""

from tollway.edge.descriptor import DescriptorSetError, check_descriptor_set
from tollway.edge.envoy_config import CANARY_HEADER, build_envoy_config, cluster_name
from tollway.edge.k8s import build_k8s_manifests, k8s_name
from tollway.edge.render import render_envoy_yaml, validate_with_envoy

__all__ = [
    "CANARY_HEADER",
    "DescriptorSetError",
    "build_envoy_config",
    "build_k8s_manifests",
    "check_descriptor_set",
    "cluster_name",
    "k8s_name",
    "render_envoy_yaml",
    "validate_with_envoy",
]
