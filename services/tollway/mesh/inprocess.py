"""In-process gRPC: a caller and a callee that share a process talk without a socket.

When ``deploy/mesh.yaml`` puts several services in one process (``processes:``), the launcher
gives a caller the target ``inproc:<service>`` for a co-located callee, and
:func:`tollway.mesh.clients.channel` returns an :class:`InProcessChannel` for it. The generated
stubs work on it unchanged: it has the ``grpc.aio.Channel`` methods they use, and the calls it
makes behave as a ``grpc.aio`` call does, as seen from both ends:

- the servicer's handler, found in the :class:`Registry` that the process's servers filled
  (``create_server(..., registry=...)``), runs with a copy of the caller's context variables (as a
  server's handler runs apart from the client: what it sets does not leak back), and a context that has the
  ``grpc.aio.ServicerContext`` methods servicers use: ``invocation_metadata``, ``time_remaining``
  (from the caller's timeout), ``abort``, ``send_initial_metadata``, ``set_trailing_metadata``,
  ``set_code``/``set_details``, ``cancelled``/``done``/``add_done_callback``, ``peer``, ``write``;
- the caller gets the same results and the same errors: ``grpc.aio.AioRpcError`` with the code,
  details, initial and trailing metadata (rich status included) that the callee set; UNKNOWN for an
  exception the handler let escape; DEADLINE_EXCEEDED when the timeout passes (the handler is
  cancelled, as a server's is); UNAVAILABLE when the callee is not (or no longer) registered;
  UNIMPLEMENTED for a method it does not have;
- cancelling the call (``call.cancel()``, or cancelling the task that awaits or reads it) cancels
  the handler, so a streaming handler's generator is closed at its current ``await`` and its
  ``finally`` blocks run (the router closes the provider connection);
- a unary call's handler runs in the task that awaits the call, stepped in its own copy of the
  context variables, not in a task of its own: a task costs its creation, a turn of the event loop
  to start and another to wake the caller, which on the request path (four unary calls a request)
  was more than some handlers' own work. So a unary call starts when it is awaited (every Tollway
  caller awaits it at once), or when its outcome (``initial_metadata()``, ``code()``...) is asked
  first, which starts it in a task. A stream's handler runs in a task of its own, ahead of its reader;
- a stream is bounded (:data:`STREAM_BUFFER` messages): a slow reader pauses the handler, as HTTP/2
  flow control does. A caller must cancel a stream it stops reading (Tollway's clients do, in a
  ``finally``), or let its timeout end it: unlike a ``grpc.aio`` call, an in-process call is not
  cancelled when the caller merely drops it, since the handler's task keeps it alive.

Messages are handed over, not copied: the request object the caller passed is the one the handler
reads, and the response object the handler returned is the one the caller gets. A message is
serialised only when the two sides do not use the same generated class. Sharing is safe because no
Tollway servicer or caller mutates a message after passing it on; with ``TOLLWAY_INPROCESS_CHECKS=1``
(set by the co-located test layout) every call checks that, and fails with INTERNAL naming the method
if a request changed during the call or a streamed response changed between the yield and the read.

Not supported (no Tollway RPC needs them): client-streaming and bidirectional methods, compression
and credentials (ignored, as on an insecure channel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider

__all__ = [
    "SCHEME",
    "STREAM_BUFFER",
    "InProcessChannel",
    "Registry",
    "is_inprocess",
    "process_registry",
    "served_in_process",
]

SCHEME = "inproc:"
# Messages a streaming handler may run ahead of its reader before it waits (flow control).
STREAM_BUFFER = 16
_PEER = "inproc"
# grpc's own wording, so that callers matching on details see the same text either way.
_DEADLINE_DETAILS = "Deadline Exceeded"
_CANCELLED_DETAILS = "Locally cancelled by application!"
_UNIMPLEMENTED_DETAILS = "Method not found!"
_CHECKS_ENV = "TOLLWAY_INPROCESS_CHECKS"
# Entered by every call without a span; a nullcontext keeps no state, so one serves them all.
_NO_SPAN = contextlib.nullcontext()

MetadataLike = Sequence[tuple[str, str | bytes]] | grpc.aio.Metadata | None


def is_inprocess(target: str) -> bool:
    """Whether ``target`` names a co-located service (``inproc:<service>``)."""
    return target.startswith(SCHEME)


def served_in_process(context: Any) -> bool:
    """Whether a handler's call came over an in-process channel (its caller shares the process).

    A streaming handler may then skip work whose only purpose is fewer network messages: its
    messages reach a buffer the caller reads, not a socket.
    """
    return isinstance(context, _ServicerContext)


class _Recorder:
    """Stands in for a ``grpc.aio.Server`` while servicers are added: records their handlers in
    the registry and adds them to the real server too."""

    def __init__(self, registry: Registry, name: str, server: grpc.aio.Server) -> None:
        self._registry, self._name, self._server = registry, name, server

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._registry.add_methods(self._name, {f"/{service}/{m}": h for m, h in handlers.items()})
        self._server.add_registered_method_handlers(service, handlers)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._registry.add_generic(self._name, handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._server, attr)


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class Registry:
    """The servicers one process serves, by service name (``router``), for in-process calls.

    Filled by :func:`tollway.mesh.server.create_server` (its ``registry`` argument) as servicers
    are added, and emptied for a service when its server stops: a call to a service that is not
    registered fails with UNAVAILABLE, as a connection to a stopped server does.
    """

    def __init__(self) -> None:
        self._methods: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self._generic: dict[str, list[grpc.GenericRpcHandler]] = {}

    def recorder(self, name: str, server: grpc.aio.Server) -> grpc.aio.Server:
        """A stand-in for ``server`` to pass to ``add_XServicer_to_server``: what is added to it is
        served both on ``server`` and in-process under ``name``."""
        return _Recorder(self, name, server)  # type: ignore[return-value]

    def add_methods(self, name: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        """Registers handlers by full method path (``/tollway.router.v1.RouterService/Generate``)."""
        self._methods.setdefault(name, {}).update(handlers)

    def add_generic(self, name: str, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Registers generic handlers (asked in order when no registered method matches)."""
        self._methods.setdefault(name, {})
        self._generic.setdefault(name, []).extend(handlers)

    def remove(self, name: str) -> None:
        """Forgets a service; later calls to it fail with UNAVAILABLE. Safe if it is not there."""
        self._methods.pop(name, None)
        self._generic.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered services."""
        return tuple(self._methods)

    def lookup(self, name: str, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> grpc.RpcMethodHandler:
        """The handler of ``method`` on service ``name``.

        Raises:
            grpc.aio.AioRpcError: UNAVAILABLE when the service is not registered, UNIMPLEMENTED
                when it has no such method.
        """
        methods = self._methods.get(name)
        if methods is None:
            known = ", ".join(self._methods) or "none"
            raise _rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"{SCHEME}{name}: no service {name!r} is served in this process (served: {known})",
            )
        handler = methods.get(method)
        if handler is not None:
            return handler
        for generic in self._generic.get(name, ()):
            found = generic.service(_CallDetails(method, metadata))
            if found is not None:
                return found  # type: ignore[no-any-return]
        raise _rpc_error(grpc.StatusCode.UNIMPLEMENTED, _UNIMPLEMENTED_DETAILS)


_PROCESS_REGISTRY = Registry()


def process_registry() -> Registry:
    """The registry of this process: what a co-located process's servers fill and its channels use."""
    return _PROCESS_REGISTRY


def _metadata(pairs: Iterable[tuple[str, str | bytes]]) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(*pairs)


def _rpc_error(
    code: grpc.StatusCode,
    details: str,
    initial: Iterable[tuple[str, str | bytes]] = (),
    trailing: Iterable[tuple[str, str | bytes]] = (),
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, _metadata(initial), _metadata(trailing), details=details, debug_error_string=f"in-process: {details}"
    )


def _check_metadata(metadata: MetadataLike) -> tuple[tuple[str, str | bytes], ...]:
    """The call's metadata as the servicer will read it, refused as grpc refuses it.

    Raises:
        TypeError: A ``-bin`` value is not bytes or another value is not a str (grpc raises the same).
        ValueError: A value that gRPC could not send: not printable ASCII.
    """
    if not metadata:
        return ()
    out = []
    for key, value in metadata:
        key = key.lower()
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise TypeError(f"metadata {key!r}: a -bin value must be bytes, not {type(value).__name__}")
        elif not isinstance(value, str):
            raise TypeError(f"metadata {key!r}: the value must be a str, not {type(value).__name__}")
        elif not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata {key!r}: the value is not printable ASCII, which gRPC cannot send")
        out.append((key, value))
    return tuple(out)


def _convert(
    message: Any, serializer: Callable[[Any], bytes] | None, deserializer: Callable[[bytes], Any] | None
) -> Any:
    """The message as the receiving side's class; serialised only when the classes differ."""
    # A generated stub's deserializer is `Message.FromString`, bound to the message class.
    if deserializer is None or type(message) is getattr(deserializer, "__self__", None):
        return message
    data = serializer(message) if serializer is not None else message
    return deserializer(data)


def _fingerprint(message: Any) -> bytes | None:
    serialize = getattr(message, "SerializeToString", None)
    return serialize(deterministic=True) if serialize is not None else None


class _Status:
    __slots__ = ("code", "details", "trailing")

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...]) -> None:
        self.code, self.details, self.trailing = code, details, trailing


class _ServicerContext:
    """What a servicer sees of an in-process call: ``grpc.aio.ServicerContext``'s methods."""

    def __init__(self, call: _Call, metadata: tuple[tuple[str, str | bytes], ...], deadline: float | None) -> None:
        # Weak: the call holds its context, and a cycle between the two left every call (with its
        # request and response) for the cyclic garbage collector. The call outlives its handler.
        self._call_ref = weakref.ref(call)
        self._metadata = metadata
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._callbacks: list[Callable[[Any], None]] = []

    # -- request side ------------------------------------------------------------------------------

    @property
    def _call(self) -> _Call:
        call = self._call_ref()
        assert call is not None, "an in-process call's context was used after its call was gone"
        return call

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def peer(self) -> str:
        return _PEER

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    # -- response side -----------------------------------------------------------------------------

    async def send_initial_metadata(self, metadata: MetadataLike) -> None:
        initial = self._call._initial_future()
        if initial.done():
            raise grpc.aio.UsageError("send_initial_metadata is called after the initial metadata was sent")
        initial.set_result(_check_metadata(metadata))

    def set_trailing_metadata(self, metadata: MetadataLike) -> None:
        self._trailing = _check_metadata(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str | None:
        return self._details

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: MetadataLike = ()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a non-OK status code")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = _check_metadata(trailing_metadata)
        raise grpc.aio.AbortError()

    async def write(self, message: Any) -> None:
        """Sends a response message (a streaming handler that writes instead of yielding)."""
        await self._call._send(message)

    async def read(self) -> Any:
        raise grpc.aio.UsageError("in-process calls carry one request; read() is for client-streaming methods")

    def set_compression(self, compression: grpc.Compression) -> None:
        """Ignored: nothing is compressed in-process."""

    def disable_next_message_compression(self) -> None:
        """Ignored: nothing is compressed in-process."""

    # -- life --------------------------------------------------------------------------------------

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._call._status is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    def cancelled(self) -> bool:
        return self._call._status is not None and self._call._status.code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._call._status is not None

    def _run_callbacks(self) -> None:
        if not self._callbacks:
            return
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


class _Call:
    """One in-process RPC: its handler task, status, metadata and cancellation."""

    def __init__(
        self,
        channel: InProcessChannel,
        method: str,
        request: Any,
        timeout: float | None,
        metadata: MetadataLike,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._method = method
        self._loop = loop
        self._status: _Status | None = None
        self._locally_cancelled = False
        # Made when first needed: most unary calls never send or ask for initial metadata.
        self._initial: asyncio.Future[tuple[tuple[str, str | bytes], ...]] | None = None
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._response_deserializer = response_deserializer
        deadline = loop.time() + timeout if timeout is not None else None
        self._deadline = deadline
        md = _check_metadata(metadata)
        self._context = _ServicerContext(self, md, deadline)
        self._span = channel._start_span(method)
        self._handler: grpc.RpcMethodHandler | None = None
        try:
            self._handler = channel._registry.lookup(channel.service, method, md)
        except grpc.aio.AioRpcError as exc:
            self._lookup_error: grpc.aio.AioRpcError | None = exc
        else:
            self._lookup_error = None
            request = _convert(request, request_serializer, self._handler.request_deserializer)
        self._request = request
        self._check = channel._checks
        self._request_print = _fingerprint(request) if self._check else None
        # The handler's context variables: a copy of the caller's, so what it sets does not leak back.
        self._vars = contextvars.copy_context()
        self._task: asyncio.Task[None] | None = None
        self._expired = False  # an inline unary call's deadline passed (its driver cancelled the handler)
        self._start()

    def _start(self) -> None:
        """Starts the handler in a task of its own, apart from the caller."""
        self._task = self._loop.create_task(self._run(), context=self._vars)

    def _initial_future(self) -> asyncio.Future[tuple[tuple[str, str | bytes], ...]]:
        """The initial metadata's future (sent with the first message, or empty at the end)."""
        initial = self._initial
        if initial is None:
            initial = self._initial = self._loop.create_future()
            if self._status is not None:  # asked for after the call ended without sending any
                initial.set_result(())
        return initial

    # -- the handler side --------------------------------------------------------------------------

    async def _invoke(self) -> Any:
        raise NotImplementedError

    async def _run(self, timed: bool = True) -> None:
        """Runs the handler and sets the call's status from how it ended.

        Args:
            timed: Whether to enforce the deadline here; a unary call run inline enforces it in
                its driver instead (see `_UnaryUnaryCall._step_in_context`).
        """
        if self._lookup_error is not None:
            err = self._lookup_error
            self._finish(err.code(), err.details() or "", ())
            return
        span_scope = trace.use_span(self._span, end_on_exit=False) if self._span else _NO_SPAN
        try:
            with span_scope:
                if self._deadline is None or not timed:
                    await self._invoke()
                else:
                    async with asyncio.timeout_at(self._deadline):
                        await self._invoke()
        except TimeoutError:
            self._finish(grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE_DETAILS, ())
            return
        except grpc.aio.AbortError:
            ctx = self._context
            self._finish(ctx._code or grpc.StatusCode.UNKNOWN, ctx._details or "", ctx._trailing)
            return
        except asyncio.CancelledError:
            if self._expired:
                self._finish(grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE_DETAILS, ())
                return
            # Cancelled by cancel() (which set the status already), or the loop is closing.
            self._finish(grpc.StatusCode.CANCELLED, _CANCELLED_DETAILS, ())
            raise
        except Exception as exc:  # what a grpc server reports for an exception a handler let escape
            self._finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}", self._context._trailing)
            return
        if self._check and _fingerprint(self._request) != self._request_print:
            self._finish(
                grpc.StatusCode.INTERNAL,
                f"in-process call {self._method}: the request message changed during the call; "
                "in-process calls share it, so neither side may mutate it",
                (),
            )
            return
        ctx = self._context
        code = ctx._code if ctx._code is not None else grpc.StatusCode.OK
        self._finish(code, ctx._details or "", ctx._trailing)

    def _finish(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...]) -> None:
        if self._status is not None:
            return
        self._status = _Status(code, details, trailing)
        if self._initial is not None and not self._initial.done():
            self._initial.set_result(())
        if self._span is not None:
            self._span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                self._span.set_status(StatusCode.ERROR, f"{code.name}: {details}")
            self._span.end()
        self._on_finish()
        self._context._run_callbacks()
        if self._done_callbacks:
            callbacks, self._done_callbacks = self._done_callbacks, []
            for callback in callbacks:
                callback(self)

    def _on_finish(self) -> None:
        """Wakes whoever waits for messages (streams)."""

    async def _send(self, message: Any) -> None:
        raise grpc.aio.UsageError("write() is for server-streaming methods")

    def _error(self) -> grpc.aio.AioRpcError:
        status = self._status
        assert status is not None
        initial = self._initial.result() if self._initial is not None and self._initial.done() else ()
        return _rpc_error(status.code, status.details, initial, status.trailing)

    # -- the caller side (grpc.aio.Call) -----------------------------------------------------------

    def cancel(self) -> bool:
        """Cancels the call and the handler's task. False if it had already ended."""
        if self._status is not None:
            return False
        self._locally_cancelled = True
        self._finish(grpc.StatusCode.CANCELLED, _CANCELLED_DETAILS, ())
        self._cancel_handler()
        return True

    def _cancel_handler(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def cancelled(self) -> bool:
        return self._status is not None and self._status.code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._status is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._status is not None:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        self._ensure_running()
        return _metadata(await asyncio.shield(self._initial_future()))

    def _ensure_running(self) -> None:
        """Starts the handler if nothing has yet (a unary call asked for an outcome before it is awaited)."""

    async def _wait_done(self) -> _Status:
        if self._status is None:
            self._ensure_running()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._ended())
        assert self._status is not None
        return self._status

    def _ended(self) -> asyncio.Future[Any]:
        """A future done when the handler has ended."""
        assert self._task is not None
        return self._task

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return _metadata((await self._wait_done()).trailing)

    async def code(self) -> grpc.StatusCode:
        return (await self._wait_done()).code

    async def details(self) -> str:
        return (await self._wait_done()).details

    async def wait_for_connection(self) -> None:
        """Nothing to connect to."""

    def _raise_for_status(self) -> None:
        if self._locally_cancelled:
            raise asyncio.CancelledError()
        if self._status is not None and self._status.code != grpc.StatusCode.OK:
            raise self._error()


class _UnaryUnaryCall(_Call):
    _response: Any = None
    # The task the handler runs in while the call is awaited (see the module docstring).
    _awaiter: asyncio.Task[Any] | None = None
    _cancelled_awaiter = False
    _done: asyncio.Future[None] | None = None

    def _start(self) -> None:
        """Nothing yet: the handler runs when the call is awaited."""

    def _ensure_running(self) -> None:
        if self._task is None and self._awaiter is None and self._status is None:
            super()._start()

    def _ended(self) -> asyncio.Future[Any]:
        if self._task is not None:
            return self._task
        if self._done is None:
            self._done = self._loop.create_future()
            if self._status is not None:
                self._done.set_result(None)
        return self._done

    def _on_finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _cancel_handler(self) -> None:
        if self._task is not None:
            self._task.cancel()
        elif self._awaiter is not None and not self._awaiter.done():
            # The handler runs in the awaiting task: cancelling that task cancels it at its current await.
            self._cancelled_awaiter = True
            self._awaiter.cancel()

    async def _invoke(self) -> None:
        assert self._handler is not None
        result = self._handler.unary_unary(self._request, self._context)
        if asyncio.iscoroutine(result):
            result = await result
        self._response = result

    def _step_in_context(self) -> Generator[Any, Any, None]:
        """Runs the handler in the awaiting task, each step in the call's own context variables.

        What the handler waits for (a future) is passed up to the task, and what the task is sent
        or thrown (a cancellation) is passed down, as a task does with the coroutine it runs.

        The deadline is enforced here rather than by an ``asyncio.timeout`` around the handler: a
        timer is armed only when the handler first waits, so a handler that answers without
        waiting (a budget admitted from its lease) costs none; when it fires, the awaiting task is
        cancelled, and the handler's cancellation is read as DEADLINE_EXCEEDED.
        """
        coro = self._run(timed=False)
        run = self._vars.run
        sent: Any = None
        thrown: BaseException | None = None
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                try:
                    if thrown is None:
                        waited = run(coro.send, sent)
                    else:
                        waited, thrown = run(coro.throw, thrown), None
                except StopIteration:
                    return
                if timer is None and self._deadline is not None:
                    timer = self._loop.call_at(self._deadline, self._expire)
                try:
                    sent = yield waited
                except GeneratorExit:
                    run(coro.close)
                    raise
                except BaseException as exc:  # a cancellation (or anything else) thrown into the task: the handler's
                    sent, thrown = None, exc
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        if self._status is None and self._awaiter is not None and not self._awaiter.done():
            self._expired = True
            self._awaiter.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        # Awaited directly, not shielded: a cancelled awaiting task cancels the handler (its
        # current await, in that task, is cancelled), which is what grpc.aio does to the call.
        if self._status is None:
            if self._task is None and self._awaiter is None:
                task = self._awaiter = asyncio.current_task(self._loop)
                cancelling = task.cancelling() if task is not None else 0
                try:
                    yield from self._step_in_context()
                except asyncio.CancelledError:
                    if not self._cancelled_awaiter:
                        raise  # the awaiting task itself was cancelled, not only the call
                finally:
                    self._awaiter = None
                if (self._cancelled_awaiter or self._expired) and task is not None:
                    # This task was cancelled only to reach the handler (call.cancel(), or the
                    # deadline): the caller sees the call's outcome below, not a cancellation of its
                    # own, unless the task was also cancelled from elsewhere meanwhile.
                    self._cancelled_awaiter = False
                    if task.uncancel() > cancelling:
                        raise asyncio.CancelledError()
            else:
                with contextlib.suppress(asyncio.CancelledError):
                    yield from self._ended().__await__()
        if self._status is None or self._status.code == grpc.StatusCode.CANCELLED:
            raise asyncio.CancelledError()
        self._raise_for_status()
        assert self._handler is not None
        return _convert(self._response, self._handler.response_serializer, self._response_deserializer)


class _UnaryStreamCall(_Call):
    """A server-streaming call; the handler's messages pass through a bounded buffer."""

    def __init__(self, *args: Any) -> None:
        self._buffer: collections.deque[tuple[Any, bytes | None]] = collections.deque()
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._iterating = False
        super().__init__(*args)

    async def _invoke(self) -> None:
        assert self._handler is not None
        result = self._handler.unary_stream(self._request, self._context)
        if hasattr(result, "__aiter__"):
            async for message in result:
                await self._send(message)
        elif asyncio.iscoroutine(result):
            await result  # a handler that writes with context.write()
        else:  # a synchronous generator (allowed by grpc.aio servers too)
            for message in result:
                await self._send(message)

    async def _send(self, message: Any) -> None:
        if self._status is not None:
            raise asyncio.CancelledError()
        while len(self._buffer) >= STREAM_BUFFER:
            self._writer = self._loop.create_future()
            await self._writer
        initial = self._initial_future()
        if not initial.done():
            initial.set_result(())
        self._buffer.append((message, _fingerprint(message) if self._check else None))
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _on_finish(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    async def read(self) -> Any:
        """The next message, or ``grpc.aio.EOF`` after the last.

        Raises:
            grpc.aio.AioRpcError: The call ended with a non-OK status.
            asyncio.CancelledError: The call was cancelled by this side.
        """
        if self._locally_cancelled:
            raise asyncio.CancelledError()  # what is still buffered is dropped, as grpc.aio drops it
        while not self._buffer:
            if self._status is not None:
                self._raise_for_status()
                return grpc.aio.EOF
            self._reader = self._loop.create_future()
            try:
                await self._reader
            except asyncio.CancelledError:
                self.cancel()  # the reading task was cancelled: so is the call (as in grpc.aio)
                raise
        message, printed = self._buffer.popleft()
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)
        if printed is not None and _fingerprint(message) != printed:
            self.cancel()
            raise _rpc_error(
                grpc.StatusCode.INTERNAL,
                f"in-process call {self._method}: a streamed message changed after it was sent; "
                "in-process calls share messages, so the sender may not reuse one",
            )
        assert self._handler is not None
        return _convert(message, self._handler.response_serializer, self._response_deserializer)

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()


class _UnaryUnaryMultiCallable:
    def __init__(self, channel: InProcessChannel, method: str, serializer: Any, deserializer: Any) -> None:
        self._channel, self._method = channel, method
        self._serializer, self._deserializer = serializer, deserializer

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _UnaryUnaryCall:
        self._channel._check_open()
        return _UnaryUnaryCall(
            self._channel, self._method, request, timeout, metadata, self._serializer, self._deserializer
        )


class _UnaryStreamMultiCallable(_UnaryUnaryMultiCallable):
    def __call__(  # type: ignore[override]
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _UnaryStreamCall:
        self._channel._check_open()
        return _UnaryStreamCall(
            self._channel, self._method, request, timeout, metadata, self._serializer, self._deserializer
        )


class InProcessChannel:
    """A ``grpc.aio.Channel`` to a servicer of this process (see the module docstring).

    Args:
        service: The callee's service name, as registered (``router``).
        registry: Where its handlers are; the process's registry by default. Looked up at each
            call, so the channel may be made before the callee's server starts.
        tracer_provider: When given, each call gets a client span (``rpc.system=grpc``,
            ``net.transport=inproc``) that is current while the handler runs, so the callee's own
            spans join the caller's trace as they do through the interceptors.
    """

    def __init__(
        self,
        service: str,
        registry: Registry | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.service = service
        self._registry = registry or _PROCESS_REGISTRY
        self._tracer = tracer_provider.get_tracer("tollway.mesh.inprocess") if tracer_provider else None
        self._closed = False
        self._checks = os.environ.get(_CHECKS_ENV, "") == "1"

    def _check_open(self) -> None:
        if self._closed:
            raise grpc.aio.UsageError("Channel is closed.")

    def _start_span(self, method: str) -> trace.Span | None:
        if self._tracer is None:
            return None
        service, _, name = method.strip("/").partition("/")
        return self._tracer.start_span(
            method.strip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "net.transport": "inproc"},
        )

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _UnaryUnaryMultiCallable:
        return _UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _UnaryStreamMultiCallable:
        return _UnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Returns a callable that fails: no co-located Tollway RPC streams requests."""
        return self._unsupported(method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Returns a callable that fails: no co-located Tollway RPC streams requests."""
        return self._unsupported(method)

    @staticmethod
    def _unsupported(method: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise _rpc_error(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method}: client-streaming calls are not carried in-process; call the service's port",
            )

        return call

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.SHUTDOWN if self._closed else grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """The state changes only on close(), which the caller does itself."""
        await asyncio.Event().wait()

    async def channel_ready(self) -> None:
        """Ready at once: there is no connection."""

    async def close(self, grace: float | None = None) -> None:
        """Refuses new calls; calls in flight go on (they are the callee's to finish). Idempotent."""
        self._closed = True

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
