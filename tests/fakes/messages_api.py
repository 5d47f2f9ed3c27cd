"""A loopback HTTP server speaking the Anthropic Messages API, with scripted replies.

It stands in for the LLM provider (out of reach in tests): `POST /v1/messages` answers with the next scripted
reply, as JSON or as a server-sent-event stream (whichever the request asks for), or with an error status and
headers. Every request is recorded for assertions.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str = "done"
    tool_use: dict[str, Any] | None = None  # {"name": "Write", "input": {...}}: a tool_use block before the text
    tool_use_id: str = ""  # the tool_use block's id (default: a fresh one)
    input_tokens: int = 100
    output_tokens: int = 20
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    status: int = 200
    error_type: str = ""  # for status >= 400: the error's "type"
    error_message: str = ""
    error_code: str | None = None  # error.details.error_code (spend limits)
    headers: dict[str, str] = field(default_factory=dict)
    event_delay: float = 0.0  # seconds between stream events: a slow stream
    model: str = "claude-test"
    stop_reason: str = ""  # the answer's stop_reason (default: tool_use with a tool call, else end_turn)
    raw_body: bytes | None = None  # sent as it is, with `status` and `content_type`: a malformed answer
    content_type: str = "application/json"

    @classmethod
    def error(cls, status: int, error_type: str, message: str, **kwargs: Any) -> Reply:
        return cls(status=status, error_type=error_type, error_message=message, **kwargs)


# A prompt's lists of other tasks (waiting on this one, running beside it): a route's marker in a sibling's title is
# not this request's, and whether a sibling is listed depends on timing.
_OTHER_TASKS = re.compile(r"\n## Tasks (?:waiting on|running beside) this one[^\n]*\n.*?(?=\n## |\Z)", re.DOTALL)


def own_text(message: Any) -> Any:
    """`message` with the other tasks' lists cut from its text content (what a route's marker is looked for in)."""
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return {**message, "content": _OTHER_TASKS.sub("", message["content"])}
    return message


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class MessagesAPI:
    """Start with `with MessagesAPI([...]) as api:`; `api.url` is the base URL for ANTHROPIC_BASE_URL."""

    def __init__(
        self,
        replies: list[Reply] | None = None,
        default: Reply | None = None,
        routes: dict[str, list[Reply]] | None = None,
    ) -> None:
        self.replies: deque[Reply] = deque(replies or [])
        # marker → replies: a request whose text contains the marker gets that list's next reply (parallel tasks)
        self.routes = {marker: deque(replies) for marker, replies in (routes or {}).items()}
        self.default = default or Reply()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> MessagesAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        text = json.dumps([own_text(message) for message in body.get("messages", [])])
        with self._lock:
            for marker, replies in self.routes.items():
                if marker in text and replies:
                    return replies.popleft()
            return self.replies.popleft() if self.replies else self.default

    def texts(self, marker: str) -> list[str]:
        """The user messages of every request whose text contains `marker`."""
        found = []
        for request in self.requests:
            content = json.dumps(request.body.get("messages", []))
            if marker in content:
                found.append(str(request.body["messages"][-1]["content"]))
        return found

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with api._lock:
                    api.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if not self.path.startswith("/v1/messages"):
                    self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                    return
                reply = api._next(body)
                if reply.raw_body is not None:
                    self._raw(reply)
                elif reply.status >= 400:
                    error: dict[str, Any] = {"type": reply.error_type, "message": reply.error_message}
                    if reply.error_code:
                        error["details"] = {"error_code": reply.error_code}
                    self._json(reply.status, {"type": "error", "error": error}, reply.headers)
                elif body.get("stream"):
                    self._stream(reply, body)
                else:
                    self._json(200, message_json(reply, body), reply.headers)

            def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_test")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _raw(self, reply: Reply) -> None:
                assert reply.raw_body is not None
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(reply.raw_body)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.raw_body)

            def _stream(self, reply: Reply, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.close_connection = True
                try:
                    for event in stream_events(reply, body):
                        self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                        if reply.event_delay:
                            time.sleep(reply.event_delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "cache_creation_input_tokens": reply.cache_creation_tokens,
        "cache_read_input_tokens": reply.cache_read_tokens,
    }


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.tool_use:
        blocks.append({"type": "tool_use", "id": reply.tool_use_id or f"toolu_{time.monotonic_ns()}", **reply.tool_use})
    if reply.text or not blocks:
        blocks.append({"type": "text", "text": reply.text})
    return blocks


def _stop_reason(reply: Reply) -> str:
    return reply.stop_reason or ("tool_use" if reply.tool_use else "end_turn")


def message_json(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", reply.model),
        "content": _content(reply),
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": _usage(reply),
    }


def stream_events(reply: Reply, body: dict[str, Any]) -> list[dict[str, Any]]:
    start_usage = {**_usage(reply), "output_tokens": 1}
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_test", "type": "message", "role": "assistant", "model": body.get("model", reply.model),
                "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage,
            },
        },
        {"type": "ping"},
    ]  # fmt: skip
    for index, block in enumerate(_content(reply)):
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            events.append({"type": "content_block_start", "index": index, "content_block": start})
            partial = json.dumps(block["input"])
            events.append(
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "input_json_delta", "partial_json": partial}}
            )  # fmt: skip
        else:
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            )
            for piece in _pieces(block["text"]):
                events.append(
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
                )
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {"type": "message_delta", "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
         "usage": {"output_tokens": reply.output_tokens}}
    )  # fmt: skip
    events.append({"type": "message_stop"})
    return events


def _pieces(text: str, size: int = 16) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
