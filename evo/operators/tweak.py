"""`tweak`: the offline, non-LLM operator. It perturbs one or two UPPERCASE numeric constants at a
train.py's top level, multiplicatively: integers stay integral and powers of two move to a
neighbouring power of two. A perturbed constant stays in its natural range: momenta, betas and
fractions inside (0, 1), sizes and counts at least 1, and nothing changes sign.
Hyperparameter-only evolution: a real baseline, and what tests use."""

from __future__ import annotations

import ast
import functools
import math
import random
import re
from dataclasses import dataclass

from evo.operators.base import Operator, OperatorError, Parent, Proposal, parse

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Constants that are contracts with the harness, not hyperparameters.
_FROZEN = re.compile(r"^EXIT_|SEED")
# Multiplicative steps, symmetric in log space.
FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)
# Names of constants that live in the unit interval when their value does (ASPECT_RATIO = 64 does
# not): momenta and betas (0.95 must never become 1.19), decay rates, fractions, probabilities.
_UNIT_NAME = re.compile(r"MOMENTUM|BETA|EMA|DROPOUT|RATIO|FRAC|PROB")


@dataclass(frozen=True)
class Constant:
    name: str
    value: float | int
    start: int       # character offsets of the value expression in the source
    end: int
    power_of_two: bool


def _number(node: ast.expr) -> float | int | None:
    """The value of a literal numeric expression (1e-3, -2, 2**19, 3 * 64), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.Mult, ast.Div)):
        left, right = _number(node.left), _number(node.right)
        if left is None or right is None or (isinstance(node.op, ast.Pow) and abs(right) > 64):
            return None
        if isinstance(node.op, ast.Pow):
            return left ** right
        return left * right if isinstance(node.op, ast.Mult) else left / right
    return None


def _is_power_of_two(v: float | int) -> bool:
    return isinstance(v, int) and v >= 2 and v & (v - 1) == 0


@functools.lru_cache(maxsize=256)  # a population's parents are tweaked again and again
def find_constants(code: str) -> tuple[Constant, ...]:
    """Tweakable constants: top-level `NAME = <number>` assignments, NAME in UPPERCASE."""
    try:
        tree = parse(code)
    except SyntaxError as e:
        raise OperatorError(f"tweak: the parent does not parse ({e.msg}, line {e.lineno}).") from None
    offsets = [0]
    for line in code.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and _NAME.match(target.id)) or _FROZEN.search(target.id):
            continue
        v = _number(value)
        if v is None or v == 0:
            continue
        start = offsets[value.lineno - 1] + value.col_offset
        end = offsets[value.end_lineno - 1] + value.end_col_offset
        found.append(Constant(target.id, v, start, end, _is_power_of_two(v)))
    return tuple(found)


def _format(new: float | int, old: Constant) -> str:
    if old.power_of_two:
        return f"2**{int(math.log2(new))}" if new >= 1024 else str(new)
    if isinstance(new, int):
        return str(new)
    # perturb_by already rounded it; repr keeps 0.8 * 1.25 as "1.0" (written "1" it would turn integral)
    return repr(float(new))


def in_unit_interval(c: Constant) -> bool:
    """Whether c's natural range is the unit interval: a float named like a momentum, beta,
    fraction or probability whose value lies in (0, 1]."""
    return isinstance(c.value, float) and 0 < c.value <= 1 and bool(_UNIT_NAME.search(c.name))


def perturb(c: Constant, rng: random.Random) -> float | int:
    """A new value for c, never equal to the old one and inside c's natural range."""
    return perturb_by(c, rng.choice(FACTORS))


def perturb_by(c: Constant, factor: float) -> float | int:
    """c moved by one multiplicative step. Unit-interval constants scale their odds x / (1 - x)
    instead of x, so 0.95 moves to 0.905 or 0.974, never past 1; integers keep |value| >= 1."""
    if c.power_of_two:
        return c.value * 2 if factor > 1 else c.value // 2
    if isinstance(c.value, int):
        sign, size = (1 if c.value > 0 else -1), abs(c.value)
        new = round(size * factor)
        if new == size:
            new = size + (1 if factor > 1 else -1)
        return sign * (new if new >= 1 else 2)  # 1 cannot shrink within the integers: it grows instead
    if in_unit_interval(c):
        if c.value == 1.0:  # infinite odds: a fraction at its maximum can only come down
            return float(f"{min(factor, 1 / factor):.4g}")
        odds = c.value / (1 - c.value) * factor
        new = float(f"{odds / (1 + odds):.4g}")
        if 0 < new < 1 and new != c.value:
            return new
        # rounding to 4 digits reached an end of the interval or the old value: take the smallest visible step
        step = 10 ** (math.floor(math.log10(min(c.value, 1 - c.value))) - 1)
        return round(c.value + step if factor > 1 else c.value - step, 12)
    return float(f"{c.value * factor:.4g}")


def tweak(code: str, rng: random.Random, n: int | None = None) -> tuple[str, list[tuple[str, float, float]]]:
    """Perturb one or two constants; returns the new code and (name, old, new) for each."""
    constants = find_constants(code)
    if not constants:
        raise OperatorError("tweak: the parent has no top-level UPPERCASE numeric constants to perturb.")
    n = n if n is not None else rng.choice((1, 2))
    chosen = sorted(rng.sample(constants, min(n, len(constants))), key=lambda c: c.start)
    changes, pieces, cursor = [], [], 0
    for c in chosen:
        new = perturb(c, rng)
        pieces += [code[cursor:c.start], _format(new, c)]
        cursor = c.end
        changes.append((c.name, c.value, new))
    pieces.append(code[cursor:])
    return "".join(pieces), changes


class TweakOperator(Operator):
    name = "tweak"
    n_parents = 1

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        code, changes = tweak(parents[0].code, rng)
        summary = ", ".join(f"{name} {old:g} -> {new:g}" for name, old, new in changes)
        return Proposal(code=code, hypothesis=f"tweak {summary}",
                        rationale="Multiplicative perturbation of hyperparameters (offline operator).")
