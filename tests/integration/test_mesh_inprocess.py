"""The in-process channel against a real grpc.aio server running the same servicer: the same
results, the same errors (code, details, rich status, trailing and initial metadata), the same
deadline and cancellation behaviour. No stack needed."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from tests.support.polling import eventually
from tollway.mesh import clients, propagation
from tollway.mesh.config import MeshConfig
from tollway.mesh.errors import ResourceExhausted, rpc_errors, to_status
from tollway.mesh.inprocess import InProcessChannel, Registry, served_in_process
from tollway.mesh.server import ServiceSpec, create_server
from tollway.router.v1 import router_pb2, router_pb2_grpc

pytestmark = pytest.mark.timeout(30)


class Probe(router_pb2_grpc.RouterServiceServicer):
    """Does, per request model, one of the things a servicer may do to a call."""

    def __init__(self) -> None:
        self.closed: list[str] = []  # streams whose generator was closed, by model
        self.cancelled: list[str] = []  # unary handlers that saw their cancellation

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> Any:
        model = request.request.model
        if model == "echo":
            await context.send_initial_metadata((("x-init", "i"),))
            context.set_trailing_metadata((("x-trail", "t"), ("x-trail-bin", b"\x00\x01")))
            md = context.invocation_metadata()
            seen = sorted((k, v) for k, v in md if k.startswith("x-") or k == "authorization")
            remaining = context.time_remaining()
            propagation.capture(context.invocation_metadata())
            # The caller's 5 s must arrive as a deadline of about 5 s. Over a real channel it travels
            # as a grpc-timeout header, which gRPC rounds up (to 10 ms units at 5 s, computed from a
            # cached clock), so a real server usually sees a few ms more than 5 s (up to 5.0098 s in
            # 3,000 calls here): bounding it by 5 s made this test flaky. Half a second of slack still
            # tells a propagated deadline from none or from a longer default.
            return router_pb2.CompleteResponse(
                text=json.dumps({"md": seen, "deadline": remaining is not None and 0 < remaining <= 5.5}),
                started=router_pb2.Started(model=request.request.model, attempt_count=2),
            )
        if model == "abort":
            status = to_status(ResourceExhausted("slow down", retry_after_s=2.5, reason="TOO_FAST"), "probe.tollway")
            await context.abort(status.code, status.details, status.trailing_metadata)
        if model == "boom":
            raise ValueError("boom")
        if model == "set-code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("no such thing")
            return router_pb2.CompleteResponse()
        if model == "slow":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.cancelled.append(model)
                raise
        if model == "mutate":
            request.request.model = "changed"
            return router_pb2.CompleteResponse()
        if model == "where":
            return router_pb2.CompleteResponse(text="in-process" if served_in_process(context) else "network")
        return router_pb2.CompleteResponse(text=model)

    @rpc_errors("probe.tollway")
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        try:
            await context.send_initial_metadata((("x-ratelimit-remaining-requests", "9"),))
            yield router_pb2.GenerateResponse(started=router_pb2.Started(model=request.model))
            if request.model == "fail-mid":
                yield router_pb2.GenerateResponse(delta=router_pb2.Delta(text="a"))
                raise ResourceExhausted("quota gone", retry_after_s=1, reason="QUOTA")
            endless = request.model.startswith("endless")
            count = 1000 if endless else 3
            for i in range(count):
                if endless:
                    await asyncio.sleep(0.01)
                yield router_pb2.GenerateResponse(delta=router_pb2.Delta(text=f"w{i} "))
            yield router_pb2.GenerateResponse(completed=router_pb2.Completed(usage_reported=True))
        finally:
            self.closed.append(request.model)


@pytest.fixture
async def probe() -> AsyncIterator[tuple[Probe, grpc.aio.Channel, InProcessChannel, Registry]]:
    servicer = Probe()
    registry = Registry()
    spec = ServiceSpec(
        name="probe",
        port=0,
        add_servicers=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server),
        service_names=["tollway.router.v1.RouterService"],
        mesh=MeshConfig(),
    )
    server, port, _ = await create_server(spec, "127.0.0.1:0", registry=registry)
    real = clients.channel(f"127.0.0.1:{port}")
    inproc = InProcessChannel("probe", registry=registry)
    try:
        yield servicer, real, inproc, registry
    finally:
        await real.close()
        await server.stop(None)


def _md(metadata: Any) -> list[tuple[str, Any]]:
    # grpc's own transport headers aside, both sides must carry the same pairs.
    return [(k, v) for k, v in metadata or () if k not in ("user-agent", "grpc-accept-encoding", "grpc-encoding")]


async def _unary(channel: Any, model: str, **kwargs: Any) -> tuple[Any, ...]:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Complete(router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model=model)), **kwargs)
    try:
        reply = await call
    except grpc.aio.AioRpcError as err:
        status = rpc_status.from_call(err)
        return (
            "error",
            err.code(),
            err.details(),
            _md(err.trailing_metadata()),
            _md(err.initial_metadata()),
            status.message if status else None,
        )
    return ("ok", reply, _md(await call.initial_metadata()), _md(await call.trailing_metadata()), await call.code())


async def _stream(channel: Any, model: str) -> tuple[Any, ...]:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Generate(router_pb2.GenerateRequest(model=model))
    got: list[Any] = []
    try:
        async for msg in call:
            got.append(msg)
    except grpc.aio.AioRpcError as err:
        return ("error", got, err.code(), err.details(), _md(err.trailing_metadata()), _md(err.initial_metadata()))
    return ("ok", got, _md(await call.initial_metadata()), await call.code())


@pytest.mark.parametrize("model", ["echo", "abort", "boom", "set-code", "plain"])
async def test_unary_outcomes_match_a_real_server(probe: Any, model: str) -> None:
    _, real, inproc, _ = probe
    metadata = (("authorization", "Bearer tw-x"), ("x-canary", "1"))
    expected = await _unary(real, model, metadata=metadata, timeout=5)
    assert await _unary(inproc, model, metadata=metadata, timeout=5) == expected


@pytest.mark.parametrize("model", ["words", "fail-mid"])
async def test_stream_outcomes_match_a_real_server(probe: Any, model: str) -> None:
    _, real, inproc, _ = probe
    expected = await _stream(real, model)
    assert await _stream(inproc, model) == expected


async def test_read_style_and_eof_match(probe: Any) -> None:
    _, real, inproc, _ = probe
    for channel in (real, inproc):
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(router_pb2.GenerateRequest(model="words"))
        kinds = []
        while (msg := await call.read()) is not grpc.aio.EOF:
            kinds.append(msg.WhichOneof("event"))
        assert kinds == ["started", "delta", "delta", "delta", "completed"]
        assert await call.read() is grpc.aio.EOF


async def test_deadline_exceeded_cancels_the_handler(probe: Any) -> None:
    servicer, real, inproc, _ = probe
    for channel in (real, inproc):
        outcome = await _unary(channel, "slow", timeout=0.2)
        assert outcome[:3] == ("error", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    await eventually(lambda: len(servicer.cancelled) == 2, timeout_s=15, what="both handlers cancelled")
    assert servicer.cancelled == ["slow", "slow"]
    # The deadline cancelled the handler, not the task that awaited the call (where an in-process
    # handler runs): it goes on as after any failed call.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)
    assert (await _unary(inproc, "plain"))[0] == "ok"


async def test_a_deadline_and_a_cancellation_of_the_caller_together_leave_the_caller_cancelled(probe: Any) -> None:
    """The deadline and a cancellation from elsewhere reach the awaiting task in the same turn: the
    caller must end cancelled, as with ``asyncio.timeout``, not with the call's deadline error."""
    servicer, _, inproc, _ = probe
    call = router_pb2_grpc.RouterServiceStub(inproc).Complete(
        router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model="slow")), timeout=30
    )
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0.05)  # the handler is waiting now
    call._expire()  # what the deadline's timer does
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.cancelled == ["slow"]


@pytest.mark.parametrize("how", ["cancel", "task"])
async def test_client_cancellation_closes_the_stream_generator(probe: Any, how: str) -> None:
    servicer, real, inproc, _ = probe
    for channel in (real, inproc):
        model = f"endless-{'inproc' if channel is inproc else 'real'}"
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(router_pb2.GenerateRequest(model=model))

        async def read_some(call: Any = call) -> None:
            while True:
                await call.read()

        reader = asyncio.ensure_future(read_some())
        await asyncio.sleep(0.1)
        if how == "cancel":
            assert call.cancel()
        else:
            reader.cancel()
            call.cancel()  # what RouterClient does in its finally
        with pytest.raises(asyncio.CancelledError):
            await reader
        # A real server learns of the cancellation from the peer's RST_STREAM, which may take a moment;
        # after a cancelled read (how == "task") grpc.aio's server on a loaded machine sometimes does
        # not learn of it at all while the stream is blocked on flow control, so that case is checked
        # on the in-process side only (where the handler's task is cancelled directly).
        if channel is inproc or how == "cancel":
            closed = lambda m=model: m in servicer.closed  # noqa: E731
            await eventually(closed, timeout_s=15, what=f"the generator of {model} closed")
        assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call.read()


async def test_cancelling_the_awaiting_task_cancels_a_unary_call(probe: Any) -> None:
    servicer, real, inproc, _ = probe
    for channel in (real, inproc):
        task = asyncio.ensure_future(_unary(channel, "slow", timeout=5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(lambda: len(servicer.cancelled) == 2, timeout_s=15, what="both handlers cancelled")
    assert servicer.cancelled == ["slow", "slow"]


async def test_context_variables_set_by_the_callee_stay_in_the_callee(probe: Any) -> None:
    _, _, inproc, _ = probe
    propagation.capture((("x-canary", "0"),))
    await _unary(inproc, "echo", metadata=(("x-canary", "1"),))
    assert propagation.outgoing() == (("x-canary", "0"),)


async def test_the_request_is_shared_not_copied(probe: Any) -> None:
    """No copy on the way in: the handler reads the caller's own message object."""
    _, _, inproc, registry = probe
    seen: list[Any] = []
    handler = registry.lookup("probe", "/tollway.router.v1.RouterService/Complete", ())

    async def spy(request: Any, context: Any) -> Any:
        seen.append(request)
        return router_pb2.CompleteResponse()

    registry.add_methods("probe", {"/tollway.router.v1.RouterService/Complete": handler._replace(unary_unary=spy)})
    request = router_pb2.CompleteRequest()
    await router_pb2_grpc.RouterServiceStub(inproc).Complete(request)
    assert seen[0] is request


async def test_checks_catch_a_handler_that_mutates_the_request(probe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, _, registry = probe
    assert (await _unary(InProcessChannel("probe", registry=registry), "mutate"))[0] == "ok"
    monkeypatch.setenv("TOLLWAY_INPROCESS_CHECKS", "1")
    outcome = await _unary(InProcessChannel("probe", registry=registry), "mutate")
    assert outcome[1] == grpc.StatusCode.INTERNAL and "changed during the call" in outcome[2]


async def test_unknown_method_and_missing_service(probe: Any) -> None:
    _, real, inproc, registry = probe
    for channel in (real, inproc):
        call = channel.unary_unary("/tollway.router.v1.RouterService/Nope")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    registry.remove("probe")
    outcome = await _unary(inproc, "plain")
    assert outcome[1] == grpc.StatusCode.UNAVAILABLE and "inproc:probe" in outcome[2]


async def test_clients_channel_gives_the_in_process_channel() -> None:
    channel = clients.channel("inproc:router")
    assert isinstance(channel, InProcessChannel) and channel.service == "router"
    await channel.close()
    with pytest.raises(grpc.aio.UsageError):
        router_pb2_grpc.RouterServiceStub(channel).Complete(router_pb2.CompleteRequest())


async def test_a_handler_knows_whether_its_caller_shares_the_process(probe: Any) -> None:
    _, real, inproc, _ = probe
    for channel, expected in ((real, "network"), (inproc, "in-process")):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        answer = await stub.Complete(router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model="where")))
        assert answer.text == expected


async def test_call_cancel_from_another_task_ends_a_unary_call_without_cancelling_its_caller(probe: Any) -> None:
    """What openai_compat does when its client leaves: a watcher cancels the awaited call."""
    servicer, real, inproc, _ = probe
    for channel in (real, inproc):
        call = router_pb2_grpc.RouterServiceStub(channel).Complete(
            router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model="slow")), timeout=5
        )
        asyncio.get_running_loop().call_later(0.1, call.cancel)
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED
        # The awaiting task (this test's) was not left marked as cancelled.
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        assert (await _unary(channel, "plain"))[0] == "ok"
    await eventually(lambda: len(servicer.cancelled) == 2, timeout_s=15, what="both handlers cancelled")


async def test_an_outcome_asked_before_the_call_is_awaited_starts_it(probe: Any) -> None:
    _, real, inproc, _ = probe
    for channel in (real, inproc):
        call = router_pb2_grpc.RouterServiceStub(channel).Complete(
            router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model="echo")), timeout=5
        )
        assert ("x-init", "i") in _md(await asyncio.wait_for(call.initial_metadata(), 5))
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.OK
        assert json.loads((await call).text)["deadline"]


async def test_a_unary_call_awaited_twice_gives_the_same_answer(probe: Any) -> None:
    _, real, inproc, _ = probe
    for channel in (real, inproc):
        call = router_pb2_grpc.RouterServiceStub(channel).Complete(
            router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model="twice"))
        )
        first, second = await asyncio.gather(asyncio.ensure_future(call), asyncio.ensure_future(call))
        assert first.text == second.text == "twice"
        assert (await call).text == "twice"


async def test_a_finished_call_is_freed_without_the_cyclic_collector(probe: Any) -> None:
    """Each call was a reference cycle (call and context), so every request's calls, requests and
    answers waited for the cyclic collector, which then ran every few requests."""
    _, _, inproc, _ = probe
    stub = router_pb2_grpc.RouterServiceStub(inproc)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for model in ("plain", "echo", "abort", "boom"):
            await _unary(inproc, model)
        async for _ in stub.Generate(router_pb2.GenerateRequest(model="three")):
            pass
        await asyncio.sleep(0)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__module__ == "tollway.mesh.inprocess"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
