"""httpx 0.x and httpx2 (the transport of the openai 3.x and anthropic 2.x SDKs).

Both generations share one API, so one adapter patches ``Client.send`` and
``AsyncClient.send`` of whichever the process imports, and wraps the body stream of the
response it returns. Choices made on purpose:

* **``send``, not the transport.** Every request goes through ``send`` (``get``,
  ``post``, ``Client.stream()``, the SDKs), once per call, outside redirects and auth
  retries: the call is timed as its caller sees it. Contrib's instrumentation patches
  the transport, inside ``send``, so the two never race for the same function and
  their order of instrumenting does not matter.
* **A body read whole is streamed and read here.** ``send(stream=False)`` becomes
  ``send(stream=True)`` followed by ``response.read()`` (closing the response if that
  raises), which is what httpx's own ``send`` does, so the first byte of a body read
  whole is seen too. The caller gets the same response, bytes and exceptions.
* **The body stream.** ``response.stream`` is replaced by a stream of the same
  generation's base class that hands each chunk on before counting it; ``close`` /
  ``aclose`` (and a response dropped unclosed) end the call.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter
from types import ModuleType
from typing import Any

from opentelemetry import context
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
from opentelemetry.util.http import ExcludeList, get_excluded_urls

from otel_stream.clients.call import ClientCall
from otel_stream.guard import guarded
from otel_stream.recorder import Recorder

_OPENTELEMETRY = "opentelemetry.instrumentation."


def wrapped_by_opentelemetry(target: Any, method: str) -> bool:
    """True when an OpenTelemetry instrumentation (contrib's) wraps ``target.method``."""
    if type(target).__module__.startswith(_OPENTELEMETRY):
        return True  # contrib's OpenTelemetryTransport classes
    function = getattr(target, method, None)
    for _ in range(8):  # a chain of wrapt wrappers, outermost first
        wrapper = getattr(function, "_self_wrapper", None)
        if wrapper is None:
            return False
        module = getattr(getattr(wrapper, "func", wrapper), "__module__", None) or ""
        if module.startswith(_OPENTELEMETRY):
            return True
        function = getattr(function, "__wrapped__", None)
    return False


@functools.lru_cache(maxsize=1)
def _contrib_excluded_urls() -> ExcludeList | None:
    return get_excluded_urls("HTTPX")  # read once, as contrib does when it instruments


def _excluded_by_contrib(url: str) -> bool:
    """Contrib's httpx instrumentation records nothing for its excluded URLs."""
    excluded = _contrib_excluded_urls()
    return excluded is not None and bool(excluded.url_disabled(url))


def contrib_inside(client: Any, url: Any, handler: str) -> bool:
    """Whether contrib's instrumentation will start a CLIENT span in ``client``'s transport."""
    try:
        transport = client._transport_for_url(url)  # private: an unknown httpx says no
    except Exception:
        return False
    return wrapped_by_opentelemetry(transport, handler) and not _excluded_by_contrib(str(url))


@guarded("httpx request start")
def start_call(
    recorder: Recorder, client: Any, request: Any, stream: bool, handler: str
) -> ClientCall | None:
    """A call for ``request`` sent by ``client``, its trace headers injected; None on failure."""
    url = request.url
    call = ClientCall(
        recorder,
        request.method,
        url.scheme,
        url.host,
        url.port,
        url.path,
        streams=stream,
        nested=contrib_inside(client, url, handler),
    )
    call.inject(request.headers)
    return call


def observe_response(call: ClientCall, response: Any, stream_class: Callable[..., Any]) -> None:
    """Headers arrived: tell the call, and put the counting stream in front of the body.

    A response event hook of the client may have read the whole body already, inside
    ``send``, before the body could be wrapped: the call then ends here, completed, with
    no first byte or chunk counted (nobody could see them), instead of staying open
    until the response is collected.
    """
    if response.is_stream_consumed or response.is_closed:
        call.response(response.status_code, response.headers.get, response.http_version)
        call.end(body_complete=True)
        return
    response.stream = stream_class(response.stream, call)
    call.response(response.status_code, response.headers.get, response.http_version)


def stream_classes(module: ModuleType) -> tuple[type[Any], type[Any]]:
    """The counting body streams for one httpx generation (``httpx`` or ``httpx2``)."""

    class CountingStream(module.SyncByteStream):  # type: ignore[name-defined,misc]
        """The body of a sync response, each chunk handed on first, then counted."""

        def __init__(self, inner: Any, call: ClientCall) -> None:
            self.inner = inner
            self.call = call

        def __iter__(self) -> Iterator[bytes]:
            call = self.call
            try:
                chunks = iter(self.inner)
                for chunk in chunks:  # up to the first byte
                    if chunk:
                        call.arrived(chunk, perf_counter())
                        yield chunk
                        call.settle()
                        if call.first_byte_recorded:  # not an SSE ping before it
                            break
                    else:
                        yield chunk
                settle = call.settle
                for chunk in chunks:  # the per-chunk path: note, hand on, count
                    if chunk:
                        call.pending_at = perf_counter()
                        call.pending = chunk
                        yield chunk
                        settle()
                    else:
                        yield chunk
            except GeneratorExit:
                call.end()
                raise
            except BaseException as error:
                call.end(error=error)
                raise
            call.end(body_complete=True)

        def close(self) -> None:
            try:
                self.inner.close()
            finally:
                self.call.end()

        def __del__(self) -> None:
            self.call.end()  # dropped unclosed: the caller abandoned it (end never raises)

    class AsyncCountingStream(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        """The body of an async response, each chunk handed on first, then counted."""

        def __init__(self, inner: Any, call: ClientCall) -> None:
            self.inner = inner
            self.call = call

        async def __aiter__(self) -> AsyncIterator[bytes]:
            call = self.call
            try:
                chunks = self.inner.__aiter__()
                async for chunk in chunks:  # up to the first byte
                    if chunk:
                        call.arrived(chunk, perf_counter())
                        yield chunk
                        call.settle()
                        if call.first_byte_recorded:  # not an SSE ping before it
                            break
                    else:
                        yield chunk
                settle = call.settle
                async for chunk in chunks:  # the per-chunk path: note, hand on, count
                    if chunk:
                        call.pending_at = perf_counter()
                        call.pending = chunk
                        yield chunk
                        settle()
                    else:
                        yield chunk
            except GeneratorExit:
                call.end()
                raise
            except BaseException as error:
                call.end(error=error)
                raise
            call.end(body_complete=True)

        async def aclose(self) -> None:
            try:
                await self.inner.aclose()
            finally:
                self.call.end()

        def __del__(self) -> None:
            self.call.end()

    return CountingStream, AsyncCountingStream


def send_wrappers(
    module: ModuleType, recorder: Callable[[], Recorder | None]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The wrapt wrappers of ``Client.send`` and ``AsyncClient.send`` for ``module``.

    ``recorder`` returns the active instrumentor's recorder, or None once it was
    uninstrumented (a wrapper still installed by someone else's later patch then passes
    every call through).
    """
    sync_stream, async_stream = stream_classes(module)

    def begin(instance: Any, args: Any, kwargs: Any, method: str) -> ClientCall | None:
        """The call of this ``send``, or None when it is not to be instrumented."""
        current = recorder()
        request = args[0] if args else kwargs.get("request")
        if current is None or request is None or not is_http_instrumentation_enabled():
            return None
        return start_call(current, instance, request, bool(kwargs.get("stream")), method)

    def send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        call = begin(instance, args, kwargs, "handle_request")
        if call is None:
            return wrapped(*args, **kwargs)
        token = context.attach(call.context)  # contrib's CLIENT span becomes its child
        try:
            response = wrapped(*args, **{**kwargs, "stream": True})
        except BaseException as error:
            call.end(error=error)
            raise
        finally:
            context.detach(token)
        observe_response(call, response, sync_stream)
        if not kwargs.get("stream"):
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response

    async def async_send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        call = begin(instance, args, kwargs, "handle_async_request")
        if call is None:
            return await wrapped(*args, **kwargs)
        token = context.attach(call.context)  # contrib's CLIENT span becomes its child
        try:
            response = await wrapped(*args, **{**kwargs, "stream": True})
        except BaseException as error:
            call.end(error=error)
            raise
        finally:
            context.detach(token)
        observe_response(call, response, async_stream)
        if not kwargs.get("stream"):
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    return send, async_send
