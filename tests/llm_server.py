"""A fake LLM server on 127.0.0.1 for tests and benchmarks. It speaks OpenAI chat completions
(`POST /v1/chat/completions`) and Anthropic messages (`POST /v1/messages`) over real HTTP, so the
real `openai` and `anthropic` SDKs talk to it, and plays a scripted queue of behaviours:

    server = FakeLLMServer().start()
    server.push(Reply("TITLE: ...\\nRATIONALE: ...\\n<<<<<<< SEARCH ..."))  # a good edit
    server.push(Status(429, retry_after_ms=20), Reply(...))                # 429 then success
    server.push(Status(500, times=10))                                       # repeated 500s
    server.push(Sleep(2.0))                                                  # longer than the client timeout
    server.push(Reply("x" * 5_000_000))                                      # a 5 MB reply
    server.push(Reply("...", finish="length"))                               # truncated
    server.push(Reply("...", usage=(9_000, 300), cached=8_000))              # 8k of the 9k prompt from cache
    server.push(Reply("...", reasoning="first I think"))                     # a reasoning channel
    openai_base = server.openai_url      # http://127.0.0.1:PORT/v1
    anthropic_base = server.anthropic_url  # http://127.0.0.1:PORT

When the queue is empty it answers with `default(request)` (by default `auto_edit`: a valid
SEARCH/REPLACE that changes one UPPERCASE constant of the train.py in the prompt). `latency` adds
seconds before every answer. Every request is recorded in `requests` (path, lower-cased headers,
JSON body; `last` is the latest). Usage is sent in each protocol's own fields: OpenAI
`usage.prompt_tokens` (the whole prompt) with `prompt_tokens_details.cached_tokens`; Anthropic
`usage.input_tokens` (the uncached rest) with `cache_read_input_tokens` and
`cache_creation_input_tokens`. A reasoning text goes in `message.reasoning_content` (or
`reasoning_field`) for OpenAI and in a `thinking` content block for Anthropic. Each handler thread
stops sleeping when the server stops, so shutdown is immediate.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from evo.operators.prompts import count_tokens


@dataclass
class Reply:
    text: str
    finish: str = "stop"            # "stop" or "length" (OpenAI); mapped to end_turn / max_tokens (Anthropic)
    usage: tuple[int, int] | None = None  # (whole prompt, output) tokens; default: evo's count, a rough one
    omit_usage: bool = False
    cached: int = 0                 # of the prompt tokens, read from cache
    cache_write: int = 0            # of the prompt tokens, written to cache (Anthropic)
    reasoning: str = ""             # the reasoning channel's text
    reasoning_field: str = "reasoning_content"  # OpenAI-compatible servers: or "reasoning" (OpenRouter, Ollama)


@dataclass
class Status:
    code: int
    body: str = ""
    retry_after_ms: int | None = 10  # keeps SDK backoff short; None: no header (SDK backoff applies)
    times: int = 1                   # answer like this this many times in a row


@dataclass
class Sleep:
    seconds: float
    then: Reply | None = None        # what to answer if the client is still there


@dataclass
class Recorded:
    path: str
    headers: dict
    body: dict
    at: float = field(default_factory=time.monotonic)

    @property
    def prompt_text(self) -> str:
        """Everything the client sent as text: system and messages."""
        system = self.body.get("system")
        parts = [_text(system)] if system else []
        parts += [_text(m.get("content")) for m in self.body.get("messages", [])]
        return "\n".join(parts)


def _text(content: object) -> str:
    """A message's or system prompt's text: a string, or a list of text blocks (Anthropic)."""
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)


_CONST = re.compile(r"^([A-Z][A-Z0-9_]*) = ([0-9][0-9_.eE+-]*)(\s*(?:#.*)?)$", re.MULTILINE)


def auto_edit(request: Recorded, counter: list[int] = [0]) -> Reply:  # noqa: B006 - a shared counter on purpose
    """A valid one-constant edit of the last train.py in the prompt, different on every call."""
    text = request.prompt_text
    blocks = re.findall(r"(`{3,4})python\n(.*?)\n\1", text, re.DOTALL)
    code = blocks[-1][1] if blocks else text
    consts = [(m.group(0), m.group(1), m.group(2), m.group(3)) for m in _CONST.finditer(code)
              if not m.group(1).startswith("EXIT_") and "SEED" not in m.group(1) and _nonzero(m.group(2))]
    counter[0] += 1
    if not consts:
        return Reply("TITLE: nothing to change\nRATIONALE: the prompt had no constants.")
    line, name, value, comment = consts[counter[0] % len(consts)]
    factors = (1.25, 0.8, 1.5, 0.6, 2.0, 0.5, 1.1, 0.9)
    factor = factors[(counter[0] // len(consts)) % len(factors)]
    try:
        number = float(value)
    except ValueError:
        number = 1.0
    new = f"{number * factor:.6g}" if ("." in value or "e" in value.lower()) else str(max(1, round(number * factor)))
    if new == value:
        new = str(number + 1)
    title = f"scale {name} by {factor}"
    if "fix:" in text and "must start with 'fix:'" in text:
        title = f"fix: {title}"
    return Reply(f"TITLE: {title}\nRATIONALE: {name} may be off its optimum for this budget; a worse val_bpb "
                 f"refutes it.\nEDIT:\n<<<<<<< SEARCH\n{line}\n=======\n{name} = {new}{comment}\n>>>>>>> REPLACE\n")


def _nonzero(value: str) -> bool:
    try:
        return float(value) != 0
    except ValueError:
        return False


class FakeLLMServer:
    def __init__(self, latency: float = 0.0, default: Callable[[Recorded], object] | None = None):
        self.latency = latency
        self.default = default or auto_edit
        self.queue: list[object] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- control ------------------------------------------------------------------------

    def start(self) -> "FakeLLMServer":
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *behaviours: object) -> None:
        with self._lock:
            for b in behaviours:
                if isinstance(b, Status) and b.times > 1:
                    self.queue.extend(Status(b.code, b.body, b.retry_after_ms, 1) for _ in range(b.times))
                else:
                    self.queue.append(b)

    def clear(self) -> None:
        with self._lock:
            self.queue.clear()
            self.requests.clear()

    @property
    def last(self) -> Recorded:
        with self._lock:
            return self.requests[-1]

    def _next(self, request: Recorded) -> object:
        with self._lock:
            self.requests.append(request)
            if self.queue:
                return self.queue.pop(0)
        return self.default(request)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when it slept the whole time."""
        return not self._stopping.wait(seconds) if seconds > 0 else True


def _make_handler(server: FakeLLMServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/messages"):
                return self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            request = Recorded(path, {k.lower(): v for k, v in self.headers.items()}, body)
            behaviour = server._next(request)
            if not server._sleep(server.latency):
                return
            if isinstance(behaviour, Sleep):
                if not server._sleep(behaviour.seconds):
                    return
                behaviour = behaviour.then or server.default(request)
            if isinstance(behaviour, Status):
                headers = {"retry-after-ms": str(behaviour.retry_after_ms)} if behaviour.retry_after_ms is not None else {}
                kind = "rate_limit_error" if behaviour.code == 429 else "api_error"
                return self._send(behaviour.code, {"type": "error", "error": {
                    "type": kind, "message": behaviour.body or f"scripted {behaviour.code}"}}, headers)
            if not isinstance(behaviour, Reply):
                behaviour = Reply(str(behaviour))
            anthropic = path == "/v1/messages"
            model = body.get("model", "fake")
            # by default the prompt is counted as evo counts it, so only a scripted usage looks truncated
            tokens_in, tokens_out = behaviour.usage or (count_tokens(request.prompt_text), len(behaviour.text) // 4)
            if anthropic:
                thinking = [{"type": "thinking", "thinking": behaviour.reasoning, "signature": "fake-signature"}] \
                    if behaviour.reasoning else []
                payload = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                           "content": [*thinking, {"type": "text", "text": behaviour.text}],
                           "stop_reason": "max_tokens" if behaviour.finish == "length" else "end_turn",
                           "stop_sequence": None,
                           "usage": {"input_tokens": tokens_in - behaviour.cached - behaviour.cache_write,
                                     "cache_read_input_tokens": behaviour.cached,
                                     "cache_creation_input_tokens": behaviour.cache_write,
                                     "output_tokens": tokens_out}}
            else:
                message = {"role": "assistant", "content": behaviour.text}
                if behaviour.reasoning:
                    message[behaviour.reasoning_field] = behaviour.reasoning
                payload = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "message": message, "finish_reason": behaviour.finish}],
                           "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                                     "total_tokens": tokens_in + tokens_out,
                                     "prompt_tokens_details": {"cached_tokens": behaviour.cached}}}
            if behaviour.omit_usage:
                payload.pop("usage")
            self._send(200, payload)

        def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

    return Handler
