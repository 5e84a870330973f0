from __future__ import annotations

import json
import logging

import pytest

from tollway.mesh.config import MeshConfig
from tollway.mesh.telemetry import setup_logging


@pytest.fixture
def restore_logging() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_grpc_never_logs_an_undecodable_header_value(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("gateway", MeshConfig())
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    try:
        b"Bearer tw-secret\xff".decode()
    except UnicodeDecodeError:
        # What gRPC does when a servicer reads metadata that is not UTF-8.
        grpc_core.exception("Invalid encoding on %s", b"Bearer tw-secret\xff")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "secret" not in json.dumps(line)
    assert line["level"] == "warning" and "17 bytes" in line["msg"] and "exc" not in line
