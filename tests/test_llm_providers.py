"""Providers through the real `openai` and `anthropic` SDKs against tests/llm_server.py: prompt
caching and cached-token prices, reasoning-model parameters, reasoning channels, keys that never
cross plain http, truncating servers, context windows, unknown prices, and `[tool.evo.models]`.
Requests to hosts other than 127.0.0.1 (no network here) are checked as the pure
`request_kwargs` / `api_key` they are built from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evo.config import RunConfig
from evo.operators import build, check
from evo.operators.base import OperatorError
from evo.operators.llm.client import (DEFAULT_PRICES, PLACEHOLDER_KEY, LLMClient, LLMReply, ModelSettings, Price,
                                      api_key, check_settings, cost_usd, model_price, normalize_prices,
                                      parse_model_settings, parse_model_spec, price_for, request_kwargs)
from evo.operators.llm.operator import LLMOperator
from evo.operators.prompts import count_tokens
from evo.storage import Archive

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import Reply  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
FAST = {"timeout": 2.0, "max_retries": 0}
EPHEMERAL = {"type": "ephemeral"}
STABLE = "PROGRAM AND PARENT CODE\n" * 50
VARIABLE = "this proposal's history\n"
MESSAGES = [{"role": "user", "content": STABLE + VARIABLE}]
DEEPSEEK = "openai:deepseek-chat@https://api.deepseek.com/v1"


@pytest.fixture(autouse=True)
def fresh(server, monkeypatch):
    server.clear()
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def client(server, provider: str, model: str, **kw) -> LLMClient:
    url = server.openai_url if provider == "openai" else server.anthropic_url
    return LLMClient(parse_model_spec(f"{provider}:{model}@{url}"), **FAST, **kw)


# ---------------------------------------------------------------------------
# prompt caching and cached-token prices
# ---------------------------------------------------------------------------

def test_anthropic_marks_the_system_prompt_and_the_stable_block_for_caching(server):
    server.push(Reply("the answer", usage=(10_000, 200), cached=6_000, cache_write=1_000, reasoning="let me think"))
    llm = client(server, "anthropic", "claude-sonnet-4-5", prices={"claude-sonnet-4-5": [3.0, 15.0]},
                 env={"ANTHROPIC_API_KEY": "sk-ant-loopback"})
    reply = llm.complete("SYSTEM", MESSAGES, stable_chars=len(STABLE), cache_key="run-1")
    body = server.last.body
    assert body["system"] == [{"type": "text", "text": "SYSTEM", "cache_control": EPHEMERAL}]
    assert body["messages"][0]["content"] == [{"type": "text", "text": STABLE, "cache_control": EPHEMERAL},
                                              {"type": "text", "text": VARIABLE}]
    assert "temperature" not in body and "prompt_cache_key" not in body
    # a loopback server may get the real key (anthropic 2.x sends it as a Bearer token, 0.x as x-api-key)
    headers = server.last.headers
    assert "sk-ant-loopback" in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))
    assert (reply.tokens_in, reply.tokens_cached, reply.tokens_cache_write) == (10_000, 6_000, 1_000)
    assert reply.text == "the answer" and reply.reasoning == "let me think"
    # 3,000 fresh at $3, 6,000 read at $0.30, 1,000 written at $3.75, 200 out at $15 (per million)
    assert reply.cost_usd == pytest.approx((3_000 * 3 + 6_000 * 0.3 + 1_000 * 3.75 + 200 * 15) / 1e6, abs=1e-12)


def test_anthropic_without_stable_chars_keeps_plain_messages():
    kwargs = request_kwargs(parse_model_spec("anthropic:claude-sonnet-4-5"), None, "", MESSAGES)
    assert kwargs["messages"] == MESSAGES and "system" not in kwargs  # a blank system block is refused
    whole = request_kwargs(parse_model_spec("anthropic:claude-sonnet-4-5"), None, "S", MESSAGES, stable_chars=10**6)
    assert whole["messages"][0]["content"] == [{"type": "text", "text": STABLE + VARIABLE, "cache_control": EPHEMERAL}]


def test_openai_cached_tokens_are_billed_at_the_cached_price(server):
    server.push(Reply("ok", usage=(9_000, 300), cached=8_000))
    llm = client(server, "openai", "gpt-5", prices={"gpt-5": [1.25, 10.0]})
    reply = llm.complete("SYSTEM", MESSAGES, stable_chars=len(STABLE), cache_key="run-1")
    body = server.last.body
    assert body["messages"] == [{"role": "system", "content": "SYSTEM"}, *MESSAGES]  # plain strings
    assert "prompt_cache_key" not in body  # not OpenAI's own API
    assert (reply.tokens_in, reply.tokens_cached, reply.tokens_cache_write) == (9_000, 8_000, 0)
    assert reply.cost_usd == pytest.approx((1_000 * 1.25 + 8_000 * 0.125 + 300 * 10.0) / 1e6, abs=1e-12)


@pytest.mark.parametrize("spec, sent", [
    ("openai:gpt-5", True),
    ("openai:gpt-5@https://api.openai.com/v1", True),
    ("openai:gpt-4.1@https://api.openai.com/v1", True),
    (DEEPSEEK, False),
    ("openai:openai/gpt-5@https://openrouter.ai/api/v1", False),
    ("openai:qwen3-coder@http://localhost:8000/v1", False),
])
def test_prompt_cache_key_goes_to_openai_only(spec, sent):
    kwargs = request_kwargs(parse_model_spec(spec), None, "S", MESSAGES, cache_key="run-1")
    extra = kwargs.get("extra_body", {})  # through extra_body, so older SDKs send it too
    assert ("prompt_cache_key" in extra) is sent and extra.get("prompt_cache_key", "run-1") == "run-1"
    assert "extra_body" not in request_kwargs(parse_model_spec(spec), None, "S", MESSAGES)


def test_cached_prices_and_the_price_table():
    def price(spec: str) -> Price:
        return model_price(parse_model_spec(spec))

    assert price("openai:gpt-5") == Price(1.25, 10.0, pytest.approx(0.125), 1.25)
    assert price("openai:gpt-5-mini").cached_input == pytest.approx(0.025)
    assert price("openai:gpt-4.1").cached_input == pytest.approx(0.5)
    assert price("openai:gpt-4o").cached_input == pytest.approx(1.25)
    assert price("openai:o3").cached_input == pytest.approx(0.5)
    assert price("openai:o1").cached_input == pytest.approx(7.5)
    sonnet = price("anthropic:claude-sonnet-4-5-20250929")
    assert (sonnet.cached_input, sonnet.cache_write) == (pytest.approx(0.3), pytest.approx(3.75))
    # the pro models have their own prices, not gpt-5's / o3's, and no cache discount
    assert price("openai:gpt-5-pro-2025-10-06") == Price(15.0, 120.0, 15.0, 15.0)
    assert price("openai:o3-pro") == Price(20.0, 80.0, 20.0, 20.0)
    assert price_for(parse_model_spec("openai:o1")) == (15.0, 60.0)
    assert price_for(parse_model_spec("openai:o1-mini")) == DEFAULT_PRICES["o1-mini"] == (1.10, 4.40)
    # OpenAI's own API named by URL keeps its list prices; another host has none
    assert price_for(parse_model_spec("openai:gpt-5@https://api.openai.com/v1")) == (1.25, 10.0)
    assert price_for(parse_model_spec(DEEPSEEK)) is None
    assert cost_usd(parse_model_spec(DEEPSEEK), 1_000_000, 1_000_000) == 0.0


def test_price_overrides_take_old_and_new_forms():
    assert normalize_prices({"a": [1, 2], "b": [1, 2, 0.5], "c": {"input": 1, "output": 2},
                             "d": {"input": 1, "output": 2, "cached_input": 0.25}}) == {
        "a": (1.0, 2.0), "b": (1.0, 2.0, 0.5), "c": (1.0, 2.0), "d": (1.0, 2.0, 0.25)}
    spec = parse_model_spec(DEEPSEEK)
    assert model_price(spec, {"deepseek-chat": [0.28, 0.42, 0.028]}) == Price(0.28, 0.42, 0.028, 0.28)
    assert model_price(spec, {"deepseek-chat": [0.28, 0.42]}).cached_input == 0.28  # no discount known: full price
    assert cost_usd(spec, 10_000, 1_000, {DEEPSEEK: [0.28, 0.42, 0.028]}, tokens_cached=8_000) == pytest.approx(
        (2_000 * 0.28 + 8_000 * 0.028 + 1_000 * 0.42) / 1e6, abs=1e-15)
    for bad in ([1, 2, 3, 4], [1], [True, 2], {"input": 1}, {"input": 1, "output": 2, "cached": 1}, "cheap"):
        with pytest.raises(OperatorError, match="price for 'x' must be"):
            normalize_prices({"x": bad})
    with pytest.raises(OperatorError, match="non-negative"):
        normalize_prices({"x": [1, 2, -1]})


def test_reply_fields_have_defaults():
    reply = LLMReply("t", 1, 2, 0.1, 0.0, "m", False, "{}")
    assert (reply.tokens_cached, reply.tokens_cache_write, reply.reasoning, reply.prompt_truncated) == (0, 0, "", False)


# ---------------------------------------------------------------------------
# reasoning models, temperatures, reasoning channels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-mini", "o3", "o4-mini", "openai/gpt-5"])
def test_reasoning_models_get_max_completion_tokens_and_no_temperature_on_any_server(server, model):
    server.push(Reply("ok", reasoning="step by step"))
    reply = client(server, "openai", model, temperature=0.7, max_tokens=1_234).complete("S", MESSAGES)
    body = server.last.body
    assert body["max_completion_tokens"] == 1_234 and "max_tokens" not in body and "temperature" not in body
    assert reply.reasoning == "step by step" and reply.text == "ok"


def test_openai_api_by_url_gets_max_completion_tokens():
    kwargs = request_kwargs(parse_model_spec("openai:gpt-5@https://api.openai.com/v1"), None, "S", MESSAGES)
    assert "max_completion_tokens" in kwargs and "max_tokens" not in kwargs
    gpt41 = request_kwargs(parse_model_spec("openai:gpt-4.1"), ModelSettings(temperature=0.3), "S", MESSAGES)
    assert "max_completion_tokens" in gpt41 and gpt41["temperature"] == 0.3


@pytest.mark.parametrize("model", ["qwen3-coder", "qwen3-30b-thinking", "deepseek-r1-reasoner"])
def test_compatible_non_reasoning_models_keep_max_tokens_and_temperature(server, model):
    """Self-hosted servers bound "thinking" models by max_tokens too (Ollama ignores max_completion_tokens)."""
    server.push(Reply("ok", reasoning="hidden", reasoning_field="reasoning"))
    reply = client(server, "openai", model, temperature=0.7, max_tokens=1_234).complete("S", MESSAGES)
    body = server.last.body
    assert body["max_tokens"] == 1_234 and body["temperature"] == 0.7 and "max_completion_tokens" not in body
    assert reply.reasoning == "hidden" and "hidden" not in reply.text


def test_reasoning_effort_setting_makes_a_reasoning_model(server):
    settings = ModelSettings(reasoning_effort="high", max_output_tokens=2_000)
    server.push(Reply("ok"))
    client(server, "openai", "gpt-oss-120b", settings=settings).complete("S", MESSAGES)
    body = server.last.body
    assert body["reasoning_effort"] == "high" and body["max_completion_tokens"] == 2_000 and "max_tokens" not in body
    with pytest.raises(OperatorError, match="reasoning model gpt-oss-120b does not take"):
        check_settings(parse_model_spec("openai:gpt-oss-120b"), ModelSettings(reasoning_effort="low", temperature=0.5))
    anthropic = request_kwargs(parse_model_spec("anthropic:claude-opus-4-5"), ModelSettings(reasoning_effort="max"),
                               "S", MESSAGES)
    assert anthropic["extra_body"]["output_config"] == {"effort": "max"}
    with pytest.raises(OperatorError, match="reasoning_effort for Anthropic must be one of"):
        check_settings(parse_model_spec("anthropic:claude-opus-4-5"), ModelSettings(reasoning_effort="minimal"))


def test_anthropic_2x_never_gets_a_temperature(server):
    # anthropic 2.x's messages.create has no temperature keyword: passing one was a TypeError
    server.push(Reply("ok"))
    reply = client(server, "anthropic", "claude-sonnet-4-5", temperature=0.5).complete("S", MESSAGES)
    assert reply.text == "ok" and "temperature" not in server.last.body
    with pytest.raises(OperatorError, match="no longer takes; drop it"):
        LLMClient(parse_model_spec("anthropic:claude-sonnet-4-5"), settings=ModelSettings(temperature=0.5),
                  env={"ANTHROPIC_API_KEY": "k"})


# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------

def test_no_real_key_over_plain_http_to_another_host():
    env = {"OPENAI_API_KEY": "sk-real", "DEEPSEEK_API_KEY": "sk-deep"}
    remote_http = parse_model_spec("openai:qwen@http://gpu-box:8000/v1")
    assert api_key(remote_http, env) == PLACEHOLDER_KEY
    assert api_key(parse_model_spec("openai:qwen@http://10.0.0.5:8000/v1"), env) == PLACEHOLDER_KEY
    with pytest.raises(OperatorError, match="would send DEEPSEEK_API_KEY over plain http") as info:
        api_key(remote_http, env, ModelSettings(key_env="DEEPSEEK_API_KEY"))
    assert str(info.value).count(". ") == 0
    for loopback in ("http://127.0.0.1:8000/v1", "http://127.9.9.9:1/v1", "http://[::1]:8000/v1", "http://localhost:1/v1"):
        assert api_key(parse_model_spec(f"openai:qwen@{loopback}"), env) == "sk-real"
    assert api_key(parse_model_spec("openai:qwen@https://10.0.0.5/v1"), env) == "sk-real"  # https is encrypted


def test_key_env_overrides_the_provider_variable(server):
    env = {"OPENAI_API_KEY": "sk-openai", "DEEPSEEK_API_KEY": "sk-deep"}
    assert api_key(parse_model_spec(DEEPSEEK), env, ModelSettings(key_env="DEEPSEEK_API_KEY")) == "sk-deep"
    with pytest.raises(OperatorError, match="set DEEPSEEK_API_KEY in the environment"):
        api_key(parse_model_spec(DEEPSEEK), {"OPENAI_API_KEY": "sk-openai"}, ModelSettings(key_env="DEEPSEEK_API_KEY"))
    server.push(Reply("ok"))
    client(server, "openai", "qwen", env=env, settings=ModelSettings(key_env="DEEPSEEK_API_KEY")).complete("S", MESSAGES)
    assert server.last.headers["authorization"] == "Bearer sk-deep"
    server.push(Reply("ok"))
    client(server, "openai", "qwen", env={}).complete("S", MESSAGES)
    assert server.last.headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"


# ---------------------------------------------------------------------------
# truncating servers and context windows
# ---------------------------------------------------------------------------

def big_messages() -> list[dict]:
    return [{"role": "user", "content": "def step(x):\n    return x * 2  # double it\n" * 600}]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_server_that_cut_the_prompt_is_flagged(server, provider):
    messages = big_messages()
    counted = count_tokens("S") + count_tokens(messages[0]["content"])
    assert counted > 2_000
    server.push(Reply("ok", usage=(counted // 3, 10)), Reply("ok", usage=(counted, 10)))
    llm = client(server, provider, "qwen3-coder")
    assert llm.complete("S", messages).prompt_truncated is True
    assert llm.complete("S", messages).prompt_truncated is False
    server.push(Reply("ok", usage=(5, 10)))
    assert llm.complete("S", MESSAGES).prompt_truncated is False  # a small prompt: tokenizers differ


def test_context_window_lowers_the_output_limit_or_refuses(server):
    messages = big_messages()
    counted = count_tokens("S") + count_tokens(messages[0]["content"])
    spec = parse_model_spec("openai:qwen3-coder@http://localhost:11434/v1")
    fits = request_kwargs(spec, ModelSettings(context_window=counted * 2), "S", messages)
    assert fits["max_tokens"] < counted and fits["max_tokens"] > counted // 2
    roomy = request_kwargs(spec, ModelSettings(context_window=10**6, max_output_tokens=500), "S", messages)
    assert roomy["max_tokens"] == 500
    with pytest.raises(OperatorError, match=r"does not fit the context_window of 1,000 tokens") as info:
        request_kwargs(spec, ModelSettings(context_window=1_000), "S", messages)
    assert str(info.value).count(". ") == 0
    server.push(Reply("ok"))
    client(server, "openai", "qwen3-coder", settings=ModelSettings(context_window=counted * 2)).complete("S", messages)
    assert server.last.body["max_tokens"] == fits["max_tokens"]


# ---------------------------------------------------------------------------
# unknown prices and --max-cost
# ---------------------------------------------------------------------------

def test_an_unpriced_remote_model_is_warned_about_once(capsys):
    env = {"OPENAI_API_KEY": "sk-test"}
    LLMClient(parse_model_spec(DEEPSEEK), env=env)
    LLMClient(parse_model_spec(DEEPSEEK), env=env)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"evo: warning: no price is known for {DEEPSEEK}" in err
    LLMClient(parse_model_spec("openai:deepseek-chat@https://api.deepseek.com/beta"), env=env,
              settings=ModelSettings(price=(0.28, 0.42)))
    LLMClient(parse_model_spec("openai:qwen@http://localhost:8000/v1"), env=env)  # self-hosted: free
    assert capsys.readouterr().err == ""


def test_max_cost_needs_a_price_for_every_remote_model(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = RunConfig(name="x", models=[DEEPSEEK, "openai:qwen@http://localhost:8000/v1"], max_cost=5.0)
    with pytest.raises(OperatorError, match="--max-cost cannot be kept: no price is known for openai:deepseek-chat"):
        check(config)
    check(RunConfig(name="x", models=[DEEPSEEK]))  # without --max-cost an unpriced model only warns
    check(RunConfig(name="x", models=[DEEPSEEK], max_cost=5.0, prices={"deepseek-chat": [0.28, 0.42]}))
    check(RunConfig(name="x", models=[DEEPSEEK], max_cost=5.0, model_settings={DEEPSEEK: {"price": [0.28, 0.42]}}))


def evo(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY")}
    full.update(EVO_STORAGE=f"sqlite:///{cwd}/archive/evo.db", CUDA_VISIBLE_DEVICES="", **env)
    return subprocess.run([sys.executable, "-m", "evo", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=full)


def llm_run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return evo(cwd, "run", "--name", "x", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train",
               str(SURROGATE / "train.py"), "--preset", "smoke", "--max-candidates", "1", "--operator", "llm",
               "--program", str(ROOT / "program.md"), *args, **env)


def one_sentence(result: subprocess.CompletedProcess, message: str, cwd: Path) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    db = cwd / "archive" / "evo.db"
    if db.exists():
        archive = Archive(f"sqlite:///{db}", writer=False)
        try:
            assert archive.runs() == []
        finally:
            archive.close()


def test_evo_run_refuses_max_cost_with_an_unpriced_model(tmp_path):
    result = llm_run(tmp_path, "--model", DEEPSEEK, "--max-cost", "5", OPENAI_API_KEY="sk-test")
    one_sentence(result, f"--max-cost cannot be kept: no price is known for {DEEPSEEK}", tmp_path)


def test_evo_run_takes_model_settings_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.evo.models."{DEEPSEEK}"]\nprice = [0.28, 0.42, 0.028]\nkey_env = "DEEPSEEK_API_KEY"\n'
        'max-output-tokens = 8000\n')
    # priced by its own table, so --max-cost stands; its key_env is the variable asked for
    result = llm_run(tmp_path, "--model", DEEPSEEK, "--max-cost", "5", OPENAI_API_KEY="sk-test")
    one_sentence(result, f"model {DEEPSEEK} needs an API key: set DEEPSEEK_API_KEY", tmp_path)


@pytest.mark.parametrize("table, message", [
    ('[tool.evo.models."openai:gpt-5"]\nmax_tokens = 10\n', "has unknown setting(s) max_tokens; use max_output_tokens"),
    ('[tool.evo.models.gpt-5]\nmax_output_tokens = "lots"\n', "max_output_tokens must be a positive whole number"),
    ('[tool.evo]\nmodels = 3\n', "[tool.evo.models] must be a table"),
])
def test_bad_model_tables_are_one_sentence(tmp_path, table, message):
    (tmp_path / "pyproject.toml").write_text(table)
    one_sentence(llm_run(tmp_path, "--model", "openai:gpt-5"), message, tmp_path)


def test_model_settings_tables():
    parsed = parse_model_settings({
        "openai:gpt-5@https://api.openai.com/v1/": {"max_output_tokens": 64_000, "reasoning_effort": "high",
                                                   "price": [1.25, 10, 0.125]},
        "qwen3-coder": {"temperature": 0.2, "context_window": 32_768},
        "OpenAI:deepseek-chat@https://api.deepseek.com/v1": {"key_env": "DEEPSEEK_API_KEY"},
    })
    assert parsed["openai:gpt-5@https://api.openai.com/v1"] == ModelSettings(
        max_output_tokens=64_000, reasoning_effort="high", price=(1.25, 10.0, 0.125))
    assert parsed["qwen3-coder"] == ModelSettings(temperature=0.2, context_window=32_768)
    assert parsed[DEEPSEEK].key_env == "DEEPSEEK_API_KEY"
    for table, message in [
        ({"openai:gpt-5": {"temperature": 3}}, "temperature must be a number from 0 to 2"),
        ({"openai:gpt-5": {"temperature": True}}, "temperature must be a number"),
        ({"openai:gpt-5": {"context_window": 0}}, "context_window must be a positive whole number"),
        ({"openai:gpt-5": {"reasoning_effort": "extreme"}}, "reasoning_effort must be one of"),
        ({"openai:gpt-5": {"key_env": "MY KEY"}}, "key_env must name an environment variable"),
        ({"openai:gpt-5": {"price": "cheap"}}, "price for 'openai:gpt-5' must be"),
        ({"openai:gpt-5": 8000}, "must be a table of settings"),
        ({"google:gemini": {}}, "anthropic or openai"),
        ({"gpt 5": {}}, "must name a model"),
    ]:
        with pytest.raises(OperatorError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            parse_model_settings(table)
        assert str(info.value).count(". ") == 0, str(info.value)


def test_run_config_keeps_model_settings():
    config = RunConfig(name="x", model_settings={"gpt-5": {"max_output_tokens": 100}})
    assert RunConfig.from_dict(config.to_dict()).model_settings == {"gpt-5": {"max_output_tokens": 100}}


def test_build_gives_each_client_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deep")
    config = RunConfig(name="b", program=str(ROOT / "program.md"), models=["openai:gpt-5", DEEPSEEK],
                       model_settings={"gpt-5": {"max_output_tokens": 50_000},
                                       DEEPSEEK: {"key_env": "DEEPSEEK_API_KEY", "price": [0.28, 0.42]}})
    archive = Archive(f"sqlite:///{tmp_path}/evo.db", writer=True)
    try:
        run = archive.create_run("b", config.to_dict())
        op = build(config, archive, run.id, {"preset": "smoke"})
    finally:
        archive.close()
    assert isinstance(op, LLMOperator)
    gpt5, deepseek = op.clients["openai:gpt-5"], op.clients[DEEPSEEK]
    assert gpt5.settings.max_output_tokens == 50_000 and deepseek.settings.key_env == "DEEPSEEK_API_KEY"
    assert deepseek._client.api_key == "sk-deep"
    assert cost_usd(deepseek.spec, 1_000_000, 1_000_000, op.prices) == pytest.approx(0.70)
