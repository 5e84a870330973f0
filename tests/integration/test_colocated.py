"""The co-located layout on a small supervised stack of its own (whatever TOLLWAY_TEST_LAYOUT says):
mesh.yaml's `core` group as one process, in-process calls between its members, both surfaces
answering through Envoy, and a killed group restarted as a whole."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_RUN_DIR
from tests.support.polling import eventually_sync
from tollway.cli import _create_key
from tollway.launcher.processes import free_ports
from tollway.launcher.stack import Stack, StackOptions
from tollway.launcher.supervisor import RestartPolicy

pytestmark = pytest.mark.timeout(120)
SERVICES = ("gateway", "router", "cache", "openai_compat")


@pytest.fixture(scope="module")
def core_stack(catalog: Path, namespaces: Path) -> Iterator[Stack]:
    names = ["edge", "admin", "mesh", "redis", "local_model", *SERVICES]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=Path(tempfile.mkdtemp(prefix="colocated-", dir=TEST_RUN_DIR or None)),
        catalog=catalog,
        with_model=False,
        services=SERVICES,
        env={
            "TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces),
            "TOLLWAY_LOG_LEVEL": "WARNING",
            "TOLLWAY_INPROCESS_CHECKS": "1",
        },
        restart_policy=RestartPolicy(initial_delay_s=0.3, max_delay_s=2.0, reset_after_s=5.0),
        layout="colocated",
    )
    with Stack(options) as running:
        yield running


@pytest.fixture(scope="module")
def key(core_stack: Stack) -> str:
    return asyncio.run(_create_key(core_stack.redis_url, "colocated"))[0]


def _complete(stack: Stack, key: str) -> httpx.Response:
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
    body["cache_policy"] = {"mode": "CACHE_MODE_BYPASS"}
    auth = {"authorization": f"Bearer {key}"}
    return httpx.post(f"{stack.edge_url}/v1/complete", json=body, headers=auth, timeout=30)


def test_the_group_is_one_process_whose_members_call_each_other_in_process(core_stack: Stack) -> None:
    core = core_stack.child_of("gateway")
    assert core.name == "core"
    assert all(core_stack.child_of(s) is core for s in SERVICES)
    assert core.argv[-5:] == ["core", "gateway", "cache", "router", "openai_compat"]
    assert core.env["TOLLWAY_GATEWAY_ROUTER_ADDR"] == "inproc:router"
    assert core.env["TOLLWAY_GATEWAY_CACHE_ADDR"] == "inproc:cache"
    assert core.env["TOLLWAY_OPENAI_COMPAT_GATEWAY_ADDR"] == "inproc:gateway"
    # Not started here, so not in the group: reached over its port, as in the split layout.
    assert "TOLLWAY_GATEWAY_EMBEDDING_ADDR" not in core.env


def test_both_surfaces_answer_through_the_edge(core_stack: Stack, key: str) -> None:
    assert _complete(core_stack, key).status_code == 200
    body = {"model": "fake-words-20", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{core_stack.edge_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-tollway-model"] == "fake-words-20"
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if "choices" in e)
    assert text.startswith("w0 w1 ")


def test_a_killed_group_is_restarted_as_a_whole(core_stack: Stack, key: str) -> None:
    assert core_stack.supervisor is not None
    before = core_stack.supervisor.restart_counts()["core"]
    core = core_stack.child_of("router")
    dead = core.process.pid
    os.kill(dead, signal.SIGKILL)

    def answered() -> bool:
        return core.process.pid != dead and _complete(core_stack, key).status_code == 200

    eventually_sync(answered, timeout_s=60, interval_s=0.1, what="an answer from the restarted core process")
    assert core_stack.supervisor.restart_counts()["core"] == before + 1
