"""Checks a protobuf descriptor set against what the Envoy transcoder will be asked to serve."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

__all__ = ["ERROR_DETAILS_FILE", "DescriptorSetError", "check_descriptor_set"]

# Without it, convert_grpc_status cannot print RetryInfo & co. and Envoy silently falls back to an
# empty body with a base64 grpc-status-details-bin header.
ERROR_DETAILS_FILE = "google/rpc/error_details.proto"


class DescriptorSetError(ValueError):
    """The descriptor set is unreadable or lacks something the transcoder needs."""


def check_descriptor_set(path: Path, services: list[str]) -> list[str]:
    """Checks that the descriptor set at `path` can back the transcoder.

    Args:
        path: The FileDescriptorSet (`protoc --include_imports --descriptor_set_out`).
        services: Full gRPC service names the transcoder is configured with.

    Returns:
        Warnings: things that work, but worse (a missing google/rpc/error_details.proto).

    Raises:
        DescriptorSetError: The file cannot be read or parsed, or a service is missing from it.
    """
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    except OSError as e:
        raise DescriptorSetError(f"{path}: cannot read the descriptor set ({e.strerror}); run `make protos`") from e
    except Exception as e:  # protobuf raises DecodeError, whose home module varies by runtime
        raise DescriptorSetError(f"{path}: not a FileDescriptorSet ({e})") from e
    present = {
        f"{f.package}.{svc.name}" if f.package else svc.name for f in fds.file for svc in f.service
    }
    missing = [s for s in services if s not in present]
    if missing:
        raise DescriptorSetError(
            f"{path}: lacks {', '.join(missing)} (it has: {', '.join(sorted(present)) or 'no services'}); "
            "run `make protos`, or fix grpc_services in the mesh file"
        )
    warnings = []
    if not any(f.name == ERROR_DETAILS_FILE for f in fds.file):
        warnings.append(
            f"{path}: lacks {ERROR_DETAILS_FILE}; transcoded errors will lose their details "
            "(add it to the protoc call that writes the descriptor set)"
        )
    return warnings
