"""Operators make candidates: `seed` and `import` bring code in; `tweak`, `mutate`, `crossover`
and `merge` make children from parents. Each operator implements `Operator.propose`."""

from evo.operators.base import Operator, OperatorError, OperatorUnavailable, Parent, Proposal
from evo.operators.tweak import TweakOperator

OPERATORS = {"tweak": TweakOperator}


def make_operator(name: str) -> Operator:
    if name not in OPERATORS:
        raise OperatorError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}.")
    return OPERATORS[name]()


__all__ = ["Operator", "OperatorError", "OperatorUnavailable", "Parent", "Proposal", "TweakOperator", "make_operator", "OPERATORS"]
