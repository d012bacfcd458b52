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

OPERATORS = ("llm", "tweak")
DEFAULT_MODEL = "anthropic:claude-sonnet-4-5"


def check(config: "RunConfig") -> None:
    """Fail before anything runs: unknown operator, bad model spec, missing API key."""
    if config.operator not in OPERATORS:
        raise OperatorError(f"unknown operator {config.operator!r}; choose one of {', '.join(OPERATORS)}.")
    if config.operator == "llm":
        from evo.operators.llm.client import check_credentials, parse_model_spec
        check_credentials([parse_model_spec(m) for m in config.models or [DEFAULT_MODEL]])


def build(config: "RunConfig", archive: "Archive", run_id: int, facts: dict[str, str]) -> Operator:
    check(config)
    if config.operator == "tweak":
        return TweakOperator()
    from evo.operators.llm.client import parse_model_spec
    from evo.operators.llm.operator import LLMContext, LLMOperator
    from evo.operators.memory import ArchiveMemory

    try:
        program = Path(config.program).read_text()
    except OSError as e:
        raise OperatorError(f"cannot read the research program {config.program} ({e.strerror}).") from None
    memory = ArchiveMemory(archive, run_id)
    context = LLMContext(program=program, facts=facts, lineage=memory.lineage, code=memory.code)
    return LLMOperator([parse_model_spec(m) for m in config.models or [DEFAULT_MODEL]], context,
                       prices=config.prices or None)


__all__ = ["Operator", "OperatorError", "OperatorUnavailable", "Parent", "Proposal", "TweakOperator", "build",
           "check", "OPERATORS", "DEFAULT_MODEL"]
