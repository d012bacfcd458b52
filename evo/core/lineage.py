"""Lineage rules, pure functions: which candidate is the best, the line of first parents, and the
lowest common ancestor of two candidates.

They work on any objects with the candidate's fields (`accepted`, `val_bpb`, `number`, `id`,
`parent_id`): archive rows, the report's snapshot rows, the prompts' summaries.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")
ParentMap = Mapping[int, "int | None | Sequence[int | None]"]


# ----- the best candidate ------------------------------------------------------------------------

def is_contender(c: Any) -> bool:
    """Whether a candidate can be the best: accepted (a would-be best awaiting confirmation is not
    yet) and measured here (imported values were measured elsewhere)."""
    return bool(c.accepted) and c.val_bpb is not None


def post_selection(c: Any) -> float | None:
    """The mean of a candidate's evaluations after its first (`val_bpb_post`), or None. The first
    is what it was kept for, so among the kept it is lucky on average; the later ones are not."""
    return getattr(c, "val_bpb_post", None)


def best_key(c: Any) -> tuple[float, int]:
    """Lowest post-selection mean (else mean) wins; ties go to the earlier candidate."""
    post = post_selection(c)
    return (post if post is not None else c.val_bpb, c.number)


def best_index(cands: Sequence[Any]) -> int:
    """The position of THE best candidate in `cands`, -1 if there is none: among those ever accepted,
    those measured again after selection (confirmed, re-measured) where there are any, by the mean
    of those later evaluations; otherwise by mean val_bpb (greedy settings measure nothing twice).
    Ties go to the earlier candidate."""
    contenders = [i for i, c in enumerate(cands) if is_contender(c)]
    judged = [i for i in contenders if post_selection(cands[i]) is not None] or contenders
    return min(judged, key=lambda i: best_key(cands[i]), default=-1)


def best(cands: Iterable[T]) -> T | None:
    """THE best candidate (see `best_index`)."""
    rows = list(cands)
    i = best_index(rows)
    return rows[i] if i >= 0 else None


# ----- lines of first parents --------------------------------------------------------------------

def line(start: T | None, parent_of: Callable[[T], T | None],
         key: Callable[[T], Hashable] = lambda x: x) -> list[T]:
    """`start` and its first parents, nearest first, up to the root. Stops at a node seen before
    (a damaged archive), so it always ends."""
    out: list[T] = []
    seen: set[Hashable] = set()
    node = start
    while node is not None and key(node) not in seen:
        seen.add(key(node))
        out.append(node)
        node = parent_of(node)
    return out


def first_parents(cand: T, by_id: Callable[[int], T]) -> list[T]:
    """A candidate and its line of first parents, nearest first, given a lookup of candidates by id."""
    return line(cand, lambda c: by_id(c.parent_id) if c.parent_id is not None else None,  # type: ignore[attr-defined]
                key=lambda c: c.id)  # type: ignore[attr-defined]


def ancestors(cand: T, by_id: Callable[[int], T]) -> list[T]:
    """The candidate's first parents, oldest first, without the candidate."""
    return first_parents(cand, by_id)[:0:-1]


def nearest(start: int | None, parent_of: Callable[[int], int | None], where: Callable[[int], bool]) -> int | None:
    """The first id on the line from `start` (itself included) up its first parents for which
    `where` holds, or None."""
    return next((n for n in line(start, parent_of) if where(n)), None)


# ----- the lowest common ancestor ----------------------------------------------------------------

def _parents_of(node: int, parents: ParentMap) -> list[int]:
    value = parents.get(node)
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [p for p in value if p is not None]


def _distances(start: int, parents: ParentMap) -> dict[int, int]:
    """Generations from `start` to each of its ancestors (itself at 0), over every parent edge."""
    seen = {start: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for p in _parents_of(node, parents):
            if p not in seen:
                seen[p] = seen[node] + 1
                queue.append(p)
    return seen


def lowest_common_ancestor(a: int, b: int, parents: ParentMap) -> int | None:
    """The common ancestor of a and b (either may be the other's) closest to both: the least
    total number of generations, ties broken by the nearer of the two, then the newer id.
    `parents` maps a candidate id to its parent id, None, or a sequence of parent ids."""
    da, db = _distances(a, parents), _distances(b, parents)
    common = set(da) & set(db)
    if not common:
        return None
    return min(common, key=lambda n: (da[n] + db[n], max(da[n], db[n]), -n))
