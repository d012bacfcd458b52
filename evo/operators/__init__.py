"""Operators make candidates: `seed` and `import` bring code in; `tweak`, `mutate`, `crossover`
and `merge` make children from parents. Each operator implements `Operator.propose`; `build`
makes the one a run's configuration names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evo.operators.base import Operator, OperatorError, OperatorUnavailable, Parent, Proposal
from evo.operators.tweak import TweakOperator

if TYPE_CHECKING:
    from evo.storage import Archive
    from evo.config import RunConfig
    from evo.operators.llm.client import ModelSettings, ModelSpec

OPERATORS = ("llm", "tweak")
DEFAULT_MODEL = "anthropic:claude-sonnet-4-5"


def check(config: "RunConfig") -> None:
    """Fail before anything runs: unknown operator, bad model spec or model settings, a --max-cost
    that cannot be kept because a remote model has no price, missing API key."""
    if config.operator not in OPERATORS:
        raise OperatorError(f"unknown operator {config.operator!r}; choose one of {', '.join(OPERATORS)}.")
    if config.operator == "llm":
        from evo.operators.llm.client import check_credentials, check_settings, prices_with_settings, settings_for, unpriced
        specs, settings = _models(config)
        for spec in specs:
            check_settings(spec, settings_for(spec, settings))
        missing = unpriced(specs, prices_with_settings(specs, config.prices, settings)) if config.max_cost else []
        if missing:  # their spend would count as $0 against the cap
            raise OperatorError(f"--max-cost cannot be kept: no price is known for {', '.join(map(str, missing))}; "
                                f"give one in [tool.evo.prices] or as price in [tool.evo.models.\"{missing[0]}\"].")
        check_credentials(specs, settings=settings)


def build(config: "RunConfig", archive: "Archive", run_id: int, facts: dict[str, str]) -> Operator:
    check(config)
    if config.operator == "tweak":
        return TweakOperator()
    from evo.operators.llm.client import prices_with_settings, settings_for
    from evo.operators.llm.operator import LLMContext, LLMOperator
    from evo.operators.memory import ArchiveMemory

    try:
        program = Path(config.program).read_text()
    except OSError as e:
        raise OperatorError(f"cannot read the research program {config.program} ({e.strerror}).") from None
    memory = ArchiveMemory(archive, run_id)
    context = LLMContext(program=program, facts=facts, lineage=memory.lineage, code=memory.code)
    specs, settings = _models(config)
    return LLMOperator(specs, context, prices=prices_with_settings(specs, config.prices, settings) or None,
                       settings={str(s): settings_for(s, settings) for s in specs})


def _models(config: "RunConfig") -> tuple[list["ModelSpec"], dict[str, "ModelSettings"]]:
    """The run's model specs and its parsed [tool.evo.models] settings."""
    from evo.operators.llm.client import parse_model_settings, parse_model_spec
    return ([parse_model_spec(m) for m in config.models or [DEFAULT_MODEL]],
            parse_model_settings(config.model_settings))


__all__ = ["Operator", "OperatorError", "OperatorUnavailable", "Parent", "Proposal", "TweakOperator", "build",
           "check", "OPERATORS", "DEFAULT_MODEL"]
