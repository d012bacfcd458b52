"""The LLM shell: model specs, per-model settings, credentials, prices, and one client over the
real `anthropic` and `openai` SDKs (and so any OpenAI-compatible server: vLLM, Ollama, llama.cpp,
DeepSeek, OpenRouter).

A model is named `provider:model[@base_url]`:

    anthropic:claude-sonnet-4-5
    openai:gpt-5
    openai:qwen3-coder@http://localhost:8000/v1      (vLLM; Ollama: http://localhost:11434/v1)

Keys come from ANTHROPIC_API_KEY and OPENAI_API_KEY, or the variable a model's `key_env` setting
names. A base URL on this machine, a private network or plain http (a self-hosted server) needs
none: the SDK gets a placeholder key. A real key travels only over https or to a loopback host.
The SDKs retry 408/409/429/5xx and timeouts with exponential backoff, honouring `retry-after`; when
they give up, `complete` raises `LLMUnavailable` (the engine pauses proposals). Other API errors (a
bad key, an unknown model, a prompt over the context) are `OperatorError`: one sentence, that
proposal fails.

Per-model settings (`[tool.evo.models."openai:gpt-5"]` in pyproject.toml, see `ModelSettings`)
choose the output limit, reasoning effort, temperature, key variable, context window and price.

Prompt caching: `complete(..., stable_chars=N)` marks the system prompt and the first N characters
of the first user message as the prefix shared across proposals. Anthropic gets `cache_control`
breakpoints on both; OpenAI caches prefixes by itself and gets a `prompt_cache_key` for routing.
Cached prompt tokens are billed at the model's cached-input price.
"""

from __future__ import annotations

import inspect
import ipaddress
import math
import os
import re
import sys
import time
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Mapping, NamedTuple, Sequence
from urllib.parse import urlparse

from evo.operators.base import OperatorError, OperatorUnavailable

PROVIDERS = ("anthropic", "openai")
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
OFFICIAL_HOSTS = {"anthropic": "api.anthropic.com", "openai": "api.openai.com"}
PLACEHOLDER_KEY = "evo-no-key-needed"
DEFAULT_TIMEOUT = 600.0       # seconds per request attempt
DEFAULT_MAX_RETRIES = 4       # SDK retries after the first attempt (backoff 0.5 s, 1 s, 2 s, 4 s, or retry-after)
DEFAULT_MAX_TOKENS = 16_000   # output tokens: room for a whole train.py rewrite (seed_train.py is ~9k)
REASONING_MAX_TOKENS = 32_000 # reasoning models spend output tokens on thinking first
SELF_HOSTED_MAX_TOKENS = 8_192  # a local server's context holds prompt + output (vLLM refuses more)
# Output limits of models that allow less than the default (prefix match on the model name).
MAX_OUTPUT_TOKENS = {"claude-3-5-sonnet": 8_192, "claude-3-5-haiku": 8_192, "claude-3-haiku": 4_096,
                     "claude-3-opus": 4_096, "gpt-4o": 16_384, "gpt-4-turbo": 4_096}
# Reasoning models take max_completion_tokens and refuse a temperature, wherever they are served.
_REASONING = ("gpt-5", "o1", "o3", "o4")
MAX_STORED_CHARS = 200_000    # of a response kept in the audit record
# A server that reports far fewer prompt tokens than were sent cut the prompt (Ollama's default
# context does so silently). Small prompts are left alone: tokenizers differ most there.
TRUNCATED_PROMPT_SHARE = 0.5
TRUNCATION_MIN_TOKENS = 2_000
# evo counts with an OpenAI tokenizer (or an estimate of one); another model's may count more.
CONTEXT_TOKEN_MARGIN = 0.05
EPHEMERAL = {"type": "ephemeral"}
OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")   # openai 3.x ReasoningEffort
ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")   # messages.create(output_config={"effort": ...})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# USD per million (input, output) tokens. Matched by the longest key that prefixes the model name
# (so "claude-sonnet-4-5-20250929" uses "claude-sonnet-4-5"). Self-hosted models cost 0; other
# models on a base URL that is not the provider's own API have no default price (and are warned
# about). List prices as of late 2025; override with `prices` ([tool.evo.prices] in pyproject.toml)
# or a model's `price` setting.
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
    "gpt-5-pro": (15.0, 120.0),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "o1": (15.0, 60.0),
    "o1-mini": (1.10, 4.40),
    "o1-pro": (150.0, 600.0),
    "o3": (2.0, 8.0),
    "o3-mini": (1.10, 4.40),
    "o3-pro": (20.0, 80.0),
    "o4-mini": (1.10, 4.40),
}
# Cache pricing as shares of the input price. Anthropic bills cache reads at 0.1x and 5-minute
# cache writes at 1.25x. OpenAI bills no writes; its late-2025 cached-input list prices are
# gpt-5 $0.125, gpt-5-mini $0.025, gpt-5-nano $0.005, gpt-5-codex $0.125 (0.1x); gpt-4.1 $0.50,
# -mini $0.10, -nano $0.025 (0.25x); gpt-4o $1.25, gpt-4o-mini $0.075 (0.5x); o1 $7.50, o1-mini
# $0.55, o3-mini $0.55 (0.5x); o3 $0.50, o4-mini $0.275 (0.25x); gpt-5-pro, o1-pro and o3-pro have
# no cached price (1x). A model not listed is billed its full input price for cached tokens, unless
# its price gives a third, cached number.
ANTHROPIC_CACHE_READ_SHARE = 0.1
ANTHROPIC_CACHE_WRITE_SHARE = 1.25
OPENAI_CACHED_SHARE: dict[str, float] = {
    "gpt-5": 0.1, "gpt-5-pro": 1.0, "gpt-4.1": 0.25, "gpt-4o": 0.5,
    "o1": 0.5, "o1-pro": 1.0, "o3": 0.25, "o3-mini": 0.5, "o3-pro": 1.0, "o4-mini": 0.25,
}

_warned_unpriced: set[str] = set()


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


def is_loopback(base_url: str) -> bool:
    host = (urlparse(base_url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_carry_key(base_url: str | None) -> bool:
    """A real key travels only where nobody on the way can read it: https, or this machine."""
    return base_url is None or urlparse(base_url).scheme == "https" or is_loopback(base_url)


def is_official_api(spec: ModelSpec) -> bool:
    """The provider's own API (no base URL, or one on its host): list prices and OpenAI-only fields apply."""
    return spec.base_url is None or (urlparse(spec.base_url).hostname or "").lower() == OFFICIAL_HOSTS[spec.provider]


def api_key(spec: ModelSpec, env: Mapping[str, str] | None = None, settings: "ModelSettings | None" = None) -> str:
    """The key to send: the model's `key_env` variable, else the provider's; the placeholder for a
    self-hosted server without one, and always for plain http to another host. OperatorError when
    a key is needed and missing, or when a configured key would cross plain http."""
    env = os.environ if env is None else env
    name = (settings.key_env if settings else None) or spec.key_env
    if not may_carry_key(spec.base_url):
        if settings is not None and settings.key_env:
            raise OperatorError(f"model {spec} would send {name} over plain http to another host; serve it over "
                                "https, or drop its key_env.")
        return PLACEHOLDER_KEY
    key = (env.get(name) or "").strip()
    if key:
        return key
    if settings is not None and settings.key_env:
        raise OperatorError(f"model {spec} needs an API key: set {name} in the environment (its key_env setting).")
    if not spec.needs_key:
        return PLACEHOLDER_KEY
    raise OperatorError(f"model {spec} needs an API key: set {spec.key_env} in the environment "
                        "(a self-hosted server, given as @http://host:port/v1, needs none).")


def check_credentials(specs: Sequence[ModelSpec], env: Mapping[str, str] | None = None,
                      settings: Mapping[str, "ModelSettings"] | None = None) -> None:
    """Raise OperatorError, before anything runs, when a model needs a key that is not set."""
    for spec in specs:
        api_key(spec, env, settings_for(spec, settings))


def is_reasoning(spec: ModelSpec, settings: "ModelSettings | None" = None) -> bool:
    """OpenAI's reasoning models, gpt-5* and o1/o3/o4*, or any model given a reasoning effort:
    they take max_completion_tokens and no temperature wherever they are served. The last path
    segment counts, so OpenRouter's openai/gpt-5 is one too. Self-hosted "thinking"/"reasoner"
    models are not: vLLM and Ollama bound them by max_tokens (and ignore max_completion_tokens)."""
    name = spec.model.rsplit("/", 1)[-1].lower()
    return name.startswith(_REASONING) or bool(settings and settings.reasoning_effort)


# ---------------------------------------------------------------------------
# Per-model settings
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSettings:
    """One model's `[tool.evo.models."provider:model[@base_url]"]` (or `[tool.evo.models.MODEL]`)."""
    max_output_tokens: int | None = None   # output-token limit per request (default: default_max_tokens)
    reasoning_effort: str | None = None    # OpenAI reasoning_effort; Anthropic output_config effort
    temperature: float | None = None       # sampling temperature (not for reasoning models)
    key_env: str | None = None             # the environment variable holding this model's key
    context_window: int | None = None      # tokens of prompt + output the server holds
    price: tuple[float, ...] | None = None  # (input, output[, cached_input]) USD per million tokens


MODEL_SETTINGS = tuple(f.name for f in fields(ModelSettings))


def parse_model_settings(table: Mapping | None) -> dict[str, ModelSettings]:
    """`[tool.evo.models]` -> {model key: ModelSettings}; a key is a model spec (normalised as
    str(ModelSpec)) or a bare model name. OperatorError with one sentence on a bad table."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise OperatorError("[tool.evo.models] must be a table of \"provider:model\" = {setting = value}.")
    out: dict[str, ModelSettings] = {}
    for raw_key, values in table.items():
        key = str(raw_key).strip()
        where = f'[tool.evo.models."{key}"]'
        if ":" in key:
            key = str(parse_model_spec(key))
        elif not key or "@" in key or any(c.isspace() for c in key):
            raise OperatorError(f"{where} must name a model as provider:model[@base_url] or a bare model name.")
        if not isinstance(values, Mapping):
            raise OperatorError(f"{where} must be a table of settings ({', '.join(MODEL_SETTINGS)}).")
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - set(MODEL_SETTINGS))
        if unknown:
            raise OperatorError(f"{where} has unknown setting(s) {', '.join(unknown)}; use {', '.join(MODEL_SETTINGS)}.")
        out[key] = ModelSettings(**{name: _setting(key, name, value) for name, value in values.items()})
    return out


def _setting(key: str, name: str, value: object) -> object:
    where = f'[tool.evo.models."{key}"]'

    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if name in ("max_output_tokens", "context_window"):
        if not whole(value):
            raise OperatorError(f"{where} {name} must be a positive whole number of tokens, not {value!r}.")
        return value
    if name == "reasoning_effort":
        if value not in OPENAI_EFFORTS:  # Anthropic's are a subset; check_settings holds each provider to its own
            raise OperatorError(f"{where} reasoning_effort must be one of {', '.join(OPENAI_EFFORTS)}, not {value!r}.")
        return value
    if name == "temperature":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
            raise OperatorError(f"{where} temperature must be a number from 0 to 2, not {value!r}.")
        return float(value)
    if name == "key_env":
        if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
            raise OperatorError(f"{where} key_env must name an environment variable such as OPENROUTER_API_KEY, "
                                f"not {value!r}.")
        return value
    return normalize_prices({key: value})[key]  # price


def settings_for(spec: ModelSpec, settings: Mapping[str, ModelSettings] | None) -> ModelSettings:
    """The most specific entry for this model: the whole spec, then provider:model, then the bare
    model name (entries are not merged)."""
    for key in (str(spec), f"{spec.provider}:{spec.model}", spec.model):
        if settings and key in settings:
            return settings[key]
    return ModelSettings()


def check_settings(spec: ModelSpec, settings: ModelSettings) -> None:
    """OperatorError for a setting this model cannot honour."""
    where = f'[tool.evo.models."{spec}"]'
    if settings.temperature is not None:
        if is_reasoning(spec, settings):
            raise OperatorError(f"{where} gives a temperature, which reasoning model {spec.model} does not take; "
                                "drop it.")
        if spec.provider == "anthropic" and not _anthropic_takes_temperature():
            raise OperatorError(f"{where} gives a temperature, which the installed anthropic SDK's messages.create "
                                "no longer takes; drop it.")
    if spec.provider == "anthropic" and settings.reasoning_effort not in (None, *ANTHROPIC_EFFORTS):
        raise OperatorError(f"{where} reasoning_effort for Anthropic must be one of {', '.join(ANTHROPIC_EFFORTS)}, "
                            f"not {settings.reasoning_effort!r}.")


@lru_cache(maxsize=1)
def _anthropic_takes_temperature() -> bool:
    """anthropic 2.x dropped `temperature` from messages.create (a keyword it does not know is a
    TypeError); older SDKs still take it."""
    from anthropic.resources.messages import Messages
    return "temperature" in inspect.signature(Messages.create).parameters


# ---------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------

class Price(NamedTuple):
    """USD per million tokens."""
    input: float
    output: float
    cached_input: float           # prompt tokens read from the provider's cache
    cache_write: float            # prompt tokens written to it (Anthropic)


def normalize_prices(prices: Mapping | None) -> dict[str, tuple[float, ...]]:
    """Accept {name: [in, out]}, {name: [in, out, cached_in]} or {name: {"input": in, "output": out,
    "cached_input": cached_in}} (cached optional; USD per million tokens); name is a model (prefix)
    or provider:model[@base_url]. OperatorError when malformed."""
    out: dict[str, tuple[float, ...]] = {}
    for name, value in (prices or {}).items():
        try:
            if isinstance(value, Mapping):
                if set(value) - {"input", "output", "cached_input"}:
                    raise KeyError
                numbers = [value["input"], value["output"]] + ([value["cached_input"]] if "cached_input" in value else [])
            else:
                numbers = list(value)
                if len(numbers) not in (2, 3):
                    raise ValueError
            if any(isinstance(v, (bool, str)) for v in numbers):
                raise TypeError
            entry = tuple(float(v) for v in numbers)
        except (KeyError, TypeError, ValueError):
            raise OperatorError(f"price for {name!r} must be [input, output] or [input, output, cached_input] USD "
                                "per million tokens, or {input = ..., output = ..., cached_input = ...}.") from None
        if any(v < 0 or not math.isfinite(v) for v in entry):
            raise OperatorError(f"price for {name!r} must be non-negative numbers.")
        out[str(name)] = entry
    return out


def _price_entry(spec: ModelSpec, prices: Mapping | None) -> tuple[float, ...] | None:
    """Overrides first (by the whole spec, provider:model, then model prefix), then the defaults for
    the provider's own API; a self-hosted base URL defaults to free."""
    overrides = normalize_prices(prices)
    for table in (overrides, DEFAULT_PRICES if is_official_api(spec) else {}):
        for key in (str(spec), f"{spec.provider}:{spec.model}"):
            if key in table:
                return tuple(table[key])
        matches = [k for k in table if ":" not in k and spec.model.startswith(k)]
        if matches:
            return tuple(table[max(matches, key=len)])
    return (0.0, 0.0, 0.0) if spec.base_url and is_self_hosted(spec.base_url) else None


def price_for(spec: ModelSpec, prices: Mapping | None = None) -> tuple[float, float] | None:
    """USD per million (input, output) tokens for this model, or None when no price is known
    (`model_price` adds the cache prices)."""
    entry = _price_entry(spec, prices)
    return None if entry is None else (entry[0], entry[1])


def model_price(spec: ModelSpec, prices: Mapping | None = None) -> Price | None:
    """The full price: input, output, and the cache prices (given, or the provider's shares)."""
    entry = _price_entry(spec, prices)
    if entry is None:
        return None
    if spec.provider == "anthropic":
        read, write = ANTHROPIC_CACHE_READ_SHARE, ANTHROPIC_CACHE_WRITE_SHARE
    else:
        shares = [k for k in OPENAI_CACHED_SHARE if spec.model.startswith(k)]
        read, write = (OPENAI_CACHED_SHARE[max(shares, key=len)] if shares else 1.0), 1.0
    cached = entry[2] if len(entry) > 2 else entry[0] * read
    return Price(entry[0], entry[1], cached, entry[0] * write)


def prices_with_settings(specs: Sequence[ModelSpec], prices: Mapping | None,
                         settings: Mapping[str, ModelSettings] | None) -> dict[str, tuple[float, ...]]:
    """`prices` plus each model's own `price` setting, keyed by its whole spec (so it wins)."""
    out = normalize_prices(prices)
    for spec in specs:
        own = settings_for(spec, settings).price
        if own is not None:
            out[str(spec)] = own
    return out


def unpriced(specs: Sequence[ModelSpec], prices: Mapping | None) -> list[ModelSpec]:
    """Remote models whose spend evo cannot count (self-hosted ones are free)."""
    return [s for s in specs if price_for(s, prices) is None]


def warn_unpriced(spec: ModelSpec, prices: Mapping | None) -> None:
    """One line on stderr, once per model and process, for a remote model with no known price."""
    if str(spec) in _warned_unpriced or price_for(spec, prices) is not None:
        return
    _warned_unpriced.add(str(spec))
    print(f"evo: warning: no price is known for {spec}, so its calls count as $0; give one in [tool.evo.prices] "
          f"or as price in [tool.evo.models.\"{spec}\"].", file=sys.stderr, flush=True)


def default_max_tokens(spec: ModelSpec) -> int:
    """Output-token limit per request when none is given: DEFAULT_MAX_TOKENS, more for reasoning
    models, less for self-hosted servers and for models whose own limit is lower."""
    if spec.base_url and is_self_hosted(spec.base_url):
        return SELF_HOSTED_MAX_TOKENS
    caps = [k for k in MAX_OUTPUT_TOKENS if spec.model.startswith(k)]
    if caps:
        return MAX_OUTPUT_TOKENS[max(caps, key=len)]
    return REASONING_MAX_TOKENS if spec.model.startswith(_REASONING) else DEFAULT_MAX_TOKENS


def cost_usd(spec: ModelSpec, tokens_in: int, tokens_out: int, prices: Mapping | None = None, *,
             tokens_cached: int = 0, tokens_cache_write: int = 0) -> float:
    """Dollars for one call; `tokens_in` is the whole prompt, of which `tokens_cached` were read
    from and `tokens_cache_write` written to the provider's cache. Unknown prices cost 0."""
    price = model_price(spec, prices)
    if price is None:
        return 0.0
    fresh = max(tokens_in - tokens_cached - tokens_cache_write, 0)
    return (fresh * price.input + tokens_cached * price.cached_input + tokens_cache_write * price.cache_write
            + tokens_out * price.output) / 1e6


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

def _content_text(content: object) -> str:
    if isinstance(content, list):
        return "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content or "")


def count_prompt(system: str, messages: Sequence[dict]) -> int:
    from evo.operators.prompts import count_tokens
    return count_tokens(system) + sum(count_tokens(_content_text(m.get("content", ""))) for m in messages)


def _anthropic_messages(messages: Sequence[dict], stable_chars: int) -> list[dict]:
    """The first user message split into a cached stable block and the rest. Anthropic refuses
    blank text blocks, so a blank side leaves the message whole (and cached)."""
    out = [dict(m) for m in messages]
    if stable_chars <= 0:
        return out
    for m in out:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            head, tail = m["content"][:stable_chars], m["content"][stable_chars:]
            if not head.strip() or not tail.strip():
                m["content"] = [{"type": "text", "text": m["content"], "cache_control": dict(EPHEMERAL)}]
            else:
                m["content"] = [{"type": "text", "text": head, "cache_control": dict(EPHEMERAL)},
                                {"type": "text", "text": tail}]
            break
    return out


def request_kwargs(spec: ModelSpec, settings: ModelSettings | None, system: str, messages: Sequence[dict], *,
                   stable_chars: int = 0, cache_key: str | None = None, prompt_tokens: int | None = None) -> dict:
    """The keyword arguments of `messages.create` (Anthropic) or `chat.completions.create` (OpenAI)
    for one call. `prompt_tokens`: evo's count of the prompt (counted here when a context window
    needs it). OperatorError when the prompt alone does not fit the model's context window."""
    settings = settings or ModelSettings()
    max_out = settings.max_output_tokens or default_max_tokens(spec)
    if settings.context_window:
        counted = prompt_tokens if prompt_tokens is not None else count_prompt(system, messages)
        room = settings.context_window - math.ceil(counted * (1 + CONTEXT_TOKEN_MARGIN))
        if room <= 0:
            raise OperatorError(f"the prompt of about {counted:,} tokens does not fit the context_window of "
                                f"{settings.context_window:,} tokens of {spec}.")
        max_out = min(max_out, room)
    reasoning = is_reasoning(spec, settings)
    if spec.provider == "anthropic":
        kwargs: dict = dict(model=spec.model, max_tokens=max_out, messages=_anthropic_messages(messages, stable_chars))
        if system:  # a blank text block is refused
            kwargs["system"] = [{"type": "text", "text": system, "cache_control": dict(EPHEMERAL)}]
        if settings.temperature is not None and not reasoning and _anthropic_takes_temperature():
            kwargs["temperature"] = settings.temperature
        if settings.reasoning_effort:  # through extra_body: SDKs older than the field would refuse the keyword
            kwargs["extra_body"] = {"output_config": {"effort": settings.reasoning_effort}}
        return kwargs
    kwargs = dict(model=spec.model, messages=[{"role": "system", "content": system}, *(dict(m) for m in messages)])
    # OpenAI's own API and every reasoning model want max_completion_tokens (gpt-5 and o-series
    # refuse max_tokens); compatible servers (vLLM, Ollama, llama.cpp) know max_tokens.
    kwargs["max_completion_tokens" if reasoning or is_official_api(spec) else "max_tokens"] = max_out
    if settings.temperature is not None and not reasoning:
        kwargs["temperature"] = settings.temperature
    # Newer fields go through extra_body (the same JSON on the wire): openai SDKs older than a field
    # raise TypeError for its keyword, and pyproject admits openai 1.50.
    extra = {}
    if settings.reasoning_effort:
        extra["reasoning_effort"] = settings.reasoning_effort
    if cache_key and is_official_api(spec):  # compatible servers may refuse a field they do not know
        extra["prompt_cache_key"] = cache_key
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------

@dataclass
class LLMReply:
    text: str
    tokens_in: int                # the whole prompt: uncached + read from cache + written to cache
    tokens_out: int
    latency_s: float
    cost_usd: float
    model: str                    # the spec, as text (provider:model[@base_url])
    truncated: bool               # the reply hit the output-token limit
    raw: str                      # the API's response body as JSON (cut at MAX_STORED_CHARS)
    tokens_cached: int = 0        # prompt tokens read from the provider's cache
    tokens_cache_write: int = 0   # prompt tokens written to it (Anthropic)
    reasoning: str = ""           # the reasoning channel (thinking blocks, reasoning_content); never in text
    prompt_truncated: bool = False  # the server reported far fewer prompt tokens than were sent


def clip(text: str, limit: int = MAX_STORED_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters not stored]"


class LLMClient:
    """One model behind its SDK. Thread-safe (the SDK clients are); one instance per model."""

    def __init__(self, spec: ModelSpec, *, prices: Mapping | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, max_tokens: int | None = None,
                 temperature: float | None = None, env: Mapping[str, str] | None = None,
                 settings: ModelSettings | None = None):
        """`max_tokens` and `temperature` override the settings' max_output_tokens and temperature;
        a temperature is not sent where it cannot apply (reasoning models, anthropic 2.x)."""
        settings = settings or ModelSettings()
        check_settings(spec, settings)
        self.spec = spec
        self.settings = replace(settings, max_output_tokens=max_tokens or settings.max_output_tokens,
                                temperature=temperature if temperature is not None else settings.temperature)
        self.prices = prices_with_settings([spec], prices, {str(spec): settings})
        key = api_key(spec, env, settings)
        warn_unpriced(spec, self.prices)
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

    def complete(self, system: str, messages: Sequence[dict], *, stable_chars: int = 0,
                 cache_key: str | None = None) -> LLMReply:
        """One completion. `stable_chars`: how many leading characters of the first user message
        are the same across proposals (with the system prompt, the cacheable prefix); `cache_key`
        groups calls sharing it (OpenAI's prompt_cache_key). LLMUnavailable when the API stays
        down through the retries; OperatorError for a request the API refuses or a prompt over
        the model's context_window."""
        sdk = self._sdk
        counted = count_prompt(system, messages)
        kwargs = request_kwargs(self.spec, self.settings, system, messages, stable_chars=stable_chars,
                                cache_key=cache_key, prompt_tokens=counted)
        started = time.monotonic()
        cached = written = 0
        try:
            if self.spec.provider == "anthropic":
                response = self._client.messages.create(**kwargs)
                blocks = response.content or []
                text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", "text") == "text")
                reasoning = "".join(getattr(b, "thinking", "") or "" for b in blocks if getattr(b, "type", "") == "thinking")
                usage = getattr(response, "usage", None)
                if usage:
                    cached = getattr(usage, "cache_read_input_tokens", 0) or 0
                    written = getattr(usage, "cache_creation_input_tokens", 0) or 0
                tokens_in = (getattr(usage, "input_tokens", 0) or 0) + cached + written if usage else None
                tokens_out = getattr(usage, "output_tokens", None) if usage else None
                truncated = response.stop_reason == "max_tokens"
            else:
                response = self._client.chat.completions.create(**kwargs)
                choice = response.choices[0] if response.choices else None
                message = choice.message if choice is not None else None
                text = (message.content or "") if message is not None else ""
                # vLLM and DeepSeek say reasoning_content, OpenRouter and Ollama reasoning
                channels = (getattr(message, "reasoning_content", None), getattr(message, "reasoning", None))
                reasoning = next((r for r in channels if isinstance(r, str) and r), "")
                usage = getattr(response, "usage", None)
                details = getattr(usage, "prompt_tokens_details", None) if usage else None
                cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
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
        prompt_truncated = (tokens_in is not None and counted > TRUNCATION_MIN_TOKENS
                            and tokens_in < TRUNCATED_PROMPT_SHARE * counted)
        if tokens_in is None or tokens_out is None:  # some local servers send no usage
            from evo.operators.prompts import count_tokens
            tokens_in = tokens_in if tokens_in is not None else counted
            tokens_out = tokens_out if tokens_out is not None else count_tokens(text[:MAX_STORED_CHARS])
        try:
            raw = response.model_dump_json()
        except Exception:  # pragma: no cover - SDK objects always serialise
            raw = repr(response)
        return LLMReply(text=text, tokens_in=int(tokens_in), tokens_out=int(tokens_out), latency_s=latency,
                        cost_usd=cost_usd(self.spec, int(tokens_in), int(tokens_out), self.prices,
                                          tokens_cached=int(cached), tokens_cache_write=int(written)),
                        model=self.name, truncated=bool(truncated), raw=clip(raw), tokens_cached=int(cached),
                        tokens_cache_write=int(written), reasoning=reasoning, prompt_truncated=prompt_truncated)


def _describe_error(e: Exception) -> str:
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    message = " ".join(str(message).split())
    return f"{type(e).__name__}: {message[:300]}"
