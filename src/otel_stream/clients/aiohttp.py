"""aiohttp's client: ``ClientSession._request`` and the body the caller reads.

Choices made on purpose:

* **``_request``.** Every aiohttp request (``session.get``, ``session.request``, the
  module-level ``aiohttp.request``) goes through it, once per call, outside redirects.
  Contrib's aiohttp instrumentation works through the session's trace configs, inside
  it: its CLIENT span is then otel-stream's child, whichever was instrumented first.
* **The caller's reads.** aiohttp hands the body out through ``response.content``, a
  ``StreamReader`` with a dozen read methods (``iter_any``, ``iter_chunked``, lines,
  ``read``). It is replaced by a thin proxy whose read methods note what each returned
  and count it when the caller comes back for more (forward first); everything else
  goes to the real reader, which the connection keeps feeding.
* **The end.** A read that returns the end of the body (recorded once the caller comes
  back: the read after it, the release, or the response dropped); a read that raises;
  the caller releasing or closing the response first (aiohttp then sets "Connection
  closed" on the content, which the proxy sees); or the proxy dropped unread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from opentelemetry import context
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled

from otel_stream.clients.call import ClientCall
from otel_stream.guard import guarded
from otel_stream.recorder import Recorder


def _url(session: Any, str_or_url: Any) -> Any:
    """The request's ``yarl.URL``, joined to the session's base URL as aiohttp does."""
    build = getattr(session, "_build_url", None)
    if callable(build):
        return build(str_or_url)
    from yarl import URL

    return URL(str_or_url)


def traced_by_opentelemetry(session: Any) -> bool:
    """True when contrib's aiohttp instrumentation traces this session."""
    configs = getattr(session, "_trace_configs", None) or ()
    return any(getattr(config, "_is_instrumented_by_opentelemetry", False) for config in configs)


class ObservedContent:
    """``response.content`` as the caller reads it: each read noted, then counted.

    Args:
        reader: The response's real ``StreamReader``.
        call: The call to tell.
    """

    def __init__(self, reader: Any, call: ClientCall) -> None:
        self._reader = reader
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def __repr__(self) -> str:
        return repr(self._reader)

    async def _read(
        self, read: Callable[[], Awaitable[Any]], data_of: Callable[[Any], bytes]
    ) -> Any:
        """Run one read of the real reader; the per-read path of the adapter."""
        call = self._call
        call.settle()  # the previous read's data, which the caller now has
        try:
            result = await read()
        except BaseException as error:
            call.end(error=error)
            raise
        data = data_of(result)
        at = perf_counter()
        if data:
            call.arrived(data, at)
        if self._reader.at_eof():
            if data:  # recorded on the next read, the release, or when dropped
                call.body_ended(at)
            else:
                call.end(body_complete=True)
        return result

    async def read(self, n: int = -1) -> bytes:
        return await self._read(lambda: self._reader.read(n), _same)  # type: ignore[no-any-return]

    async def readany(self) -> bytes:
        return await self._read(self._reader.readany, _same)  # type: ignore[no-any-return]

    async def readline(self, **kwargs: Any) -> bytes:
        return await self._read(lambda: self._reader.readline(**kwargs), _same)  # type: ignore[no-any-return]

    async def readuntil(self, separator: bytes = b"\n", **kwargs: Any) -> bytes:
        return await self._read(  # type: ignore[no-any-return]
            lambda: self._reader.readuntil(separator, **kwargs), _same
        )

    async def readexactly(self, n: int) -> bytes:
        return await self._read(lambda: self._reader.readexactly(n), _same)  # type: ignore[no-any-return]

    async def readchunk(self) -> tuple[bytes, bool]:
        return await self._read(self._reader.readchunk, _first)  # type: ignore[no-any-return]

    def read_nowait(self, n: int = -1) -> bytes:
        call = self._call
        call.settle()
        data: bytes = self._reader.read_nowait(n)
        if data:
            call.arrived(data, perf_counter())
        return data

    def __aiter__(self) -> Any:
        return _iterator(self.readline)

    def iter_chunked(self, n: int) -> Any:
        return _iterator(lambda: self.read(n))

    def iter_any(self) -> Any:
        return _iterator(self.readany)

    def iter_chunks(self) -> Any:
        from aiohttp.streams import ChunkTupleAsyncStreamIterator

        return ChunkTupleAsyncStreamIterator(self)  # type: ignore[arg-type]

    def set_exception(self, exc: BaseException, *args: Any) -> None:
        """aiohttp closing the content: the response was released or closed."""
        self._call.end(body_complete=self._reader.at_eof())
        self._reader.set_exception(exc, *args)

    def __del__(self) -> None:
        # Dropped: the caller abandoned it, unless it had read it all (end never raises).
        self._call.end(body_complete=self._reader.at_eof())


def _same(data: bytes) -> bytes:
    return data


def _first(pair: tuple[bytes, bool]) -> bytes:
    return pair[0]


def _iterator(read: Callable[[], Awaitable[bytes]]) -> Any:
    from aiohttp.streams import AsyncStreamIterator

    return AsyncStreamIterator(read)


@guarded("aiohttp request start")
def start_call(
    recorder: Recorder, session: Any, args: Any, kwargs: dict[str, Any]
) -> ClientCall | None:
    """A call for the request ``_request(*args, **kwargs)`` is about to send; None on failure.

    Alone, the call writes its trace context into a copy of the request's headers. All
    that can fail is done before the call starts its span: a failure here leaves no span
    open and no call counted in flight.
    """
    url = _url(session, args[1])
    nested = traced_by_opentelemetry(session)
    headers = None
    if not nested:
        from multidict import CIMultiDict

        headers = CIMultiDict(kwargs.get("headers") or {})
    call = ClientCall(
        recorder,
        str(args[0]),
        url.scheme,
        url.host or "",
        url.port,
        url.path,
        streams=False,
        nested=nested,
    )
    if headers is not None:
        call.inject(headers)
        kwargs["headers"] = headers
    return call


@guarded("aiohttp response")
def observe_response(call: ClientCall, response: Any) -> None:
    """Headers arrived: put the observing content in front of the body, tell the call."""
    response.content = ObservedContent(response.content, call)
    version = response.version
    call.response(
        response.status,
        response.headers.get,
        f"{version.major}.{version.minor}" if version else None,
        decoded=True,
    )


def request_wrapper(recorder: Callable[[], Recorder | None]) -> Callable[..., Any]:
    """The wrapt wrapper of ``ClientSession._request``."""

    async def request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        current = recorder()
        if current is None or not is_http_instrumentation_enabled() or len(args) < 2:
            return await wrapped(*args, **kwargs)
        kwargs = dict(kwargs)
        call = start_call(current, instance, args, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        token = context.attach(call.context)  # contrib's CLIENT span becomes its child
        try:
            response = await wrapped(*args, **kwargs)
        except BaseException as error:
            call.end(error=error)
            raise
        finally:
            context.detach(token)
        observe_response(call, response)
        return response

    return request
