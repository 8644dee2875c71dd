"""The WSGI middleware's small pieces of I/O: a short answer, a status line's reason phrase, and the app's
request body under ``max_body``."""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._plan import Answer
from .forward import BODY_TOO_LARGE, BodyLimit

__all__ = ["limited_app", "phrase", "send_answer"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class _LimitedInput:
    """``wsgi.input`` for a chunked body under ``max_body``: reads raise
    :class:`~affinity_mw.forward.BodyTooLarge` once the body has gone over the limit."""

    __slots__ = ("_stream", "limit")

    def __init__(self, stream: Any, limit: BodyLimit) -> None:
        self._stream = stream
        self.limit = limit

    def read(self, *size: Any) -> bytes:
        data: bytes = self._stream.read(*size)
        self.limit.add(len(data))
        return data

    def readline(self, *size: Any) -> bytes:
        data: bytes = self._stream.readline(*size)
        self.limit.add(len(data))
        return data

    def readlines(self, *hint: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*hint)
        self.limit.add(sum(len(line) for line in lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def limited_app(app: WSGIApp, limit: int, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Run the local app on a chunked body under ``max_body``.

    Once the body goes over the limit, reading ``wsgi.input`` raises ``BodyTooLarge``; if the app had not started
    its response, the client gets 413 whatever the app answers then (an exception, a 500, or even a 200 after
    catching it), since a body it could not read in full must never look handled. If it had started its response,
    the exception is the app's and the server's to deal with (typically an aborted connection).
    """
    body = _LimitedInput(environ["wsgi.input"], BodyLimit(limit))
    environ["wsgi.input"] = body
    started = False

    def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
        nonlocal started
        if body.limit.over and not started:
            return _discard  # replaced by the 413 below
        started = True
        return start_response(status, headers, *exc_info)

    try:
        result = app(environ, start)
    except Exception:
        if started or not body.limit.over:
            raise
        return send_answer(start_response, Answer(*BODY_TOO_LARGE))
    if body.limit.over and not started:
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return send_answer(start_response, Answer(*BODY_TOO_LARGE))
    return result


def _discard(data: bytes) -> None:
    pass


def phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def send_answer(start_response: StartResponse, answer: Answer) -> list[bytes]:
    headers = [
        ("Content-Type", answer.content_type),
        ("Content-Length", str(len(answer.text))),
        *((k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers),
    ]
    start_response(f"{answer.status} {phrase(answer.status)}", headers)
    return [answer.text]
