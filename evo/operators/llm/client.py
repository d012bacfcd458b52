"""The LLM shell: model specs, credentials, prices, and one client over the real `anthropic`
and `openai` SDKs (and so any OpenAI-compatible server: vLLM, Ollama, llama.cpp).

A model is named `provider:model[@base_url]`:

    anthropic:claude-sonnet-4-5
    openai:gpt-5
    openai:qwen3-coder@http://localhost:8000/v1      (vLLM; Ollama: http://localhost:11434/v1)

Keys come from ANTHROPIC_API_KEY and OPENAI_API_KEY. A base URL on this machine, a private
network or plain http (a self-hosted server) needs none: the SDK gets a placeholder key. The SDKs
retry 408/409/429/5xx and timeouts with exponential backoff, honouring `retry-after`; when they give
up, `complete` raises `LLMUnavailable` (the engine pauses proposals). Other API errors (a bad key,
an unknown model, a prompt over the context) are `OperatorError`: one sentence, that proposal fails.
"""

from __future__ import annotations

import ipaddress
import math
import os
import time
from dataclasses import dataclass
from typing import Mapping, Sequence
from urllib.parse import urlparse

from evo.operators.base import OperatorError, OperatorUnavailable

PROVIDERS = ("anthropic", "openai")
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
PLACEHOLDER_KEY = "evo-no-key-needed"
DEFAULT_TIMEOUT = 600.0       # seconds per request attempt
DEFAULT_MAX_RETRIES = 4       # SDK retries after the first attempt (backoff 0.5 s, 1 s, 2 s, 4 s, or retry-after)
DEFAULT_MAX_TOKENS = 16_000   # output tokens: room for a whole train.py rewrite (seed_train.py is ~9k)
REASONING_MAX_TOKENS = 32_000 # reasoning models spend output tokens on thinking first
SELF_HOSTED_MAX_TOKENS = 8_192  # a local server's context holds prompt + output (vLLM refuses more)
# Output limits of models that allow less than the default (prefix match on the model name).
MAX_OUTPUT_TOKENS = {"claude-3-5-sonnet": 8_192, "claude-3-5-haiku": 8_192, "claude-3-haiku": 4_096,
                     "claude-3-opus": 4_096, "gpt-4o": 16_384, "gpt-4-turbo": 4_096}
_REASONING = ("gpt-5", "o1", "o3", "o4")
MAX_STORED_CHARS = 200_000    # of a response kept in the audit record

# USD per million (input, output) tokens. Matched by the longest key that prefixes the model name
# (so "claude-sonnet-4-5-20250929" uses "claude-sonnet-4-5"). Unknown and self-hosted models cost 0.
# List prices as of late 2025; override with `prices` ([tool.evo.prices] in pyproject.toml).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-codex": (1.25, 10.0),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.0, 8.0),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


class LLMUnavailable(OperatorUnavailable):
    """The API did not answer after the SDK's retries (429, 5xx, timeouts, connection errors).
    Not an OperatorError: the engine pauses proposals instead of archiving a failure."""

    def __init__(self, message: str, llm_calls: list[dict] | None = None):
        super().__init__(message)
        self.llm_calls = list(llm_calls or [])


# ---------------------------------------------------------------------------
# Model specs and credentials
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    provider: str                 # "anthropic" or "openai"
    model: str
    base_url: str | None = None

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")

    @property
    def key_env(self) -> str:
        return KEY_ENV[self.provider]

    @property
    def needs_key(self) -> bool:
        return not (self.base_url and is_self_hosted(self.base_url))


def parse_model_spec(text: str) -> ModelSpec:
    """`provider:model[@base_url]` -> ModelSpec; OperatorError with one sentence when malformed."""
    raw = (text or "").strip()
    provider, sep, rest = raw.partition(":")
    provider = provider.strip().lower()
    if not sep or not rest.strip():
        raise OperatorError(f"model {raw!r} must look like provider:model[@base_url], e.g. anthropic:claude-sonnet-4-5 "
                            "or openai:qwen3-coder@http://localhost:8000/v1.")
    if provider not in PROVIDERS:
        raise OperatorError(f"model {raw!r} names provider {provider!r}; use anthropic or openai (openai for any "
                            "OpenAI-compatible server, with @base_url).")
    model, at, base_url = rest.partition("@")
    model, base_url = model.strip(), base_url.strip()
    if not model:
        raise OperatorError(f"model {raw!r} has no model name after {provider}:.")
    if at:
        try:
            parsed = urlparse(base_url)
            port = parsed.port  # raises ValueError when out of range or not a number
        except ValueError:
            parsed, port = None, None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or port == 0:
            raise OperatorError(f"model {raw!r} has base URL {base_url!r}; it must be http:// or https://, a host "
                                "and an optional port from 1 to 65535, e.g. http://localhost:8000/v1.")
    return ModelSpec(provider, model, base_url.rstrip("/") if at else None)


def is_self_hosted(base_url: str) -> bool:
    """A server that needs no API key: on this machine, on a private network, or plain http."""
    parsed = urlparse(base_url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme == "http" or host == "localhost" or host.endswith((".local", ".localhost", ".internal", ".lan")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def api_key(spec: ModelSpec, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    key = (env.get(spec.key_env) or "").strip()
    if key:
        return key
    if not spec.needs_key:
        return PLACEHOLDER_KEY
    raise OperatorError(f"model {spec} needs an API key: set {spec.key_env} in the environment "
                        "(a self-hosted server, given as @http://host:port/v1, needs none).")


def check_credentials(specs: Sequence[ModelSpec], env: Mapping[str, str] | None = None) -> None:
    """Raise OperatorError, before anything runs, when a model needs a key that is not set."""
    for spec in specs:
        api_key(spec, env)


# ---------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------

def normalize_prices(prices: Mapping | None) -> dict[str, tuple[float, float]]:
    """Accept {name: (in, out)}, {name: [in, out]} or {name: {"input": in, "output": out}} (USD
    per million tokens); name is a model (prefix) or provider:model. OperatorError when malformed."""
    out: dict[str, tuple[float, float]] = {}
    for name, value in (prices or {}).items():
        try:
            if isinstance(value, Mapping):
                pair = (float(value["input"]), float(value["output"]))
            else:
                a, b = value
                pair = (float(a), float(b))
        except (KeyError, TypeError, ValueError):
            raise OperatorError(f"price for {name!r} must be [input, output] USD per million tokens, or "
                                "{input = ..., output = ...}.") from None
        if pair[0] < 0 or pair[1] < 0 or not all(math.isfinite(v) for v in pair):
            raise OperatorError(f"price for {name!r} must be two non-negative numbers.")
        out[str(name)] = pair
    return out


def price_for(spec: ModelSpec, prices: Mapping[str, tuple[float, float]] | None = None) -> tuple[float, float] | None:
    """USD per million (input, output) tokens for this model, or None when no price is known.
    Overrides are searched first (by provider:model, then model prefix), then the defaults; a
    self-hosted base URL defaults to free."""
    overrides = normalize_prices(prices)
    for table in (overrides, {} if spec.base_url else DEFAULT_PRICES):
        for key in (str(spec), f"{spec.provider}:{spec.model}"):
            if key in table:
                return table[key]
        matches = [k for k in table if ":" not in k and spec.model.startswith(k)]
        if matches:
            return table[max(matches, key=len)]
    return (0.0, 0.0) if spec.base_url and is_self_hosted(spec.base_url) else None


def default_max_tokens(spec: ModelSpec) -> int:
    """Output-token limit per request when none is given: DEFAULT_MAX_TOKENS, more for reasoning
    models, less for self-hosted servers and for models whose own limit is lower."""
    if spec.base_url and is_self_hosted(spec.base_url):
        return SELF_HOSTED_MAX_TOKENS
    caps = [k for k in MAX_OUTPUT_TOKENS if spec.model.startswith(k)]
    if caps:
        return MAX_OUTPUT_TOKENS[max(caps, key=len)]
    return REASONING_MAX_TOKENS if spec.model.startswith(_REASONING) else DEFAULT_MAX_TOKENS


def cost_usd(spec: ModelSpec, tokens_in: int, tokens_out: int, prices=None) -> float:
    price = price_for(spec, prices) or (0.0, 0.0)
    return (tokens_in * price[0] + tokens_out * price[1]) / 1e6


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------

@dataclass
class LLMReply:
    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    cost_usd: float
    model: str                    # the spec, as text (provider:model[@base_url])
    truncated: bool               # the reply hit the output-token limit
    raw: str                      # the API's response body as JSON (cut at MAX_STORED_CHARS)


def clip(text: str, limit: int = MAX_STORED_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters not stored]"


class LLMClient:
    """One model behind its SDK. Thread-safe (the SDK clients are); one instance per model."""

    def __init__(self, spec: ModelSpec, *, prices: Mapping | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, max_tokens: int | None = None,
                 temperature: float | None = None, env: Mapping[str, str] | None = None):
        self.spec, self.prices = spec, normalize_prices(prices)
        self.max_tokens = max_tokens if max_tokens is not None else default_max_tokens(spec)
        self.temperature = temperature
        key = api_key(spec, env)
        if spec.provider == "anthropic":
            import anthropic
            self._sdk = anthropic
            self._client = anthropic.Anthropic(api_key=key, base_url=spec.base_url, timeout=timeout, max_retries=max_retries)
        else:
            import openai
            self._sdk = openai
            self._client = openai.OpenAI(api_key=key, base_url=spec.base_url, timeout=timeout, max_retries=max_retries)

    @property
    def name(self) -> str:
        return str(self.spec)

    def complete(self, system: str, messages: Sequence[dict]) -> LLMReply:
        """One completion. LLMUnavailable when the API stays down through the retries;
        OperatorError for a request the API refuses."""
        sdk, started = self._sdk, time.monotonic()
        try:
            if self.spec.provider == "anthropic":
                kwargs = dict(model=self.spec.model, max_tokens=self.max_tokens, system=system, messages=list(messages))
                if self.temperature is not None:
                    kwargs["temperature"] = self.temperature
                response = self._client.messages.create(**kwargs)
                text = "".join(getattr(block, "text", "") or "" for block in (response.content or [])
                               if getattr(block, "type", "text") == "text")
                usage = getattr(response, "usage", None)
                tokens_in = (getattr(usage, "input_tokens", 0) or 0) + (getattr(usage, "cache_read_input_tokens", 0) or 0) \
                    + (getattr(usage, "cache_creation_input_tokens", 0) or 0) if usage else None
                tokens_out = getattr(usage, "output_tokens", None) if usage else None
                truncated = response.stop_reason == "max_tokens"
            else:
                kwargs = dict(model=self.spec.model, messages=[{"role": "system", "content": system}, *messages])
                # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
                # compatible servers (vLLM, Ollama, llama.cpp) know max_tokens.
                kwargs["max_tokens" if self.spec.base_url else "max_completion_tokens"] = self.max_tokens
                if self.temperature is not None:
                    kwargs["temperature"] = self.temperature
                response = self._client.chat.completions.create(**kwargs)
                choice = response.choices[0] if response.choices else None
                text = (choice.message.content or "") if choice is not None and choice.message is not None else ""
                usage = getattr(response, "usage", None)
                tokens_in = getattr(usage, "prompt_tokens", None) if usage else None
                tokens_out = getattr(usage, "completion_tokens", None) if usage else None
                truncated = choice is not None and choice.finish_reason == "length"
        except (sdk.APITimeoutError, sdk.APIConnectionError) as e:
            raise LLMUnavailable(f"{self.spec} did not answer ({_describe_error(e)})") from e
        except sdk.APIStatusError as e:
            status = getattr(e, "status_code", 0) or 0
            if status in (408, 409, 429) or status >= 500:
                raise LLMUnavailable(f"{self.spec} answered HTTP {status} through every retry ({_describe_error(e)})") from e
            raise OperatorError(f"{self.spec} refused the request: HTTP {status} ({_describe_error(e)}).") from e
        except sdk.APIError as e:  # a malformed response body
            raise OperatorError(f"{self.spec} sent a response evo cannot read ({_describe_error(e)}).") from e
        latency = time.monotonic() - started
        if tokens_in is None or tokens_out is None:  # some local servers send no usage
            from evo.operators.prompts import count_tokens
            tokens_in = tokens_in if tokens_in is not None else count_tokens(system) + sum(
                count_tokens(str(m.get("content", ""))) for m in messages)
            tokens_out = tokens_out if tokens_out is not None else count_tokens(text[:MAX_STORED_CHARS])
        try:
            raw = response.model_dump_json()
        except Exception:  # pragma: no cover - SDK objects always serialise
            raw = repr(response)
        return LLMReply(text=text, tokens_in=int(tokens_in), tokens_out=int(tokens_out), latency_s=latency,
                        cost_usd=cost_usd(self.spec, int(tokens_in), int(tokens_out), self.prices), model=self.name,
                        truncated=bool(truncated), raw=clip(raw))


def _describe_error(e: Exception) -> str:
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    message = " ".join(str(message).split())
    return f"{type(e).__name__}: {message[:300]}"
