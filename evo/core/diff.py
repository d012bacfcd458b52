"""Unified diffs fast enough for 10,000 versions of a 30 kB train.py.

`unified_diff(a, b)` returns what `difflib.unified_diff` returns for the two texts' lines (with
`diff -u`'s marker for a last line without a newline), but does most of the work on the strings
themselves with C-speed primitives instead of splitting and matching every line in Python:

1. the common head and tail of a stretch are cut off (binary search over slice comparisons),
   rounded to whole lines;
2. a long stretch that still differs is split at a line that occurs exactly once on each side
   (patience diff's anchor), and both halves are aligned the same way;
3. only short stretches, or stretches without such a line, are split into lines and handed to
   difflib's SequenceMatcher.

Every alignment it picks is a valid diff; for a typical edit it is the same as difflib's.
"""

from __future__ import annotations

import difflib
from itertools import accumulate

# An opcode with line and character coordinates:
# (tag, a_line1, a_line2, b_line1, b_line2, a_char1, a_char2, b_char1, b_char2)
Op = tuple

SMALL = 120       # stretches with fewer lines than this (both sides together) go to SequenceMatcher
TRIES = 24        # candidate anchor lines tried around the middle of a stretch


def unified_diff(a: str, b: str, a_name: str = "a", b_name: str = "b", n: int = 3) -> str:
    if a == b:
        return ""
    ops = _with_lines(a, b, _opcodes(a, b))
    out = [f"--- {a_name}\n", f"+++ {b_name}\n"]
    for group in _grouped(a, b, ops, n):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, _, _, _, _, ca1, ca2, cb1, cb2 in group:
            if tag == "equal":
                out += [" " + line for line in a[ca1:ca2].splitlines(keepends=True)]
                continue
            if tag in ("replace", "delete"):
                out += ["-" + line for line in a[ca1:ca2].splitlines(keepends=True)]
            if tag in ("replace", "insert"):
                out += ["+" + line for line in b[cb1:cb2].splitlines(keepends=True)]
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)


def _range(start: int, stop: int) -> str:
    """A hunk range as difflib writes it (an empty range names the line before it)."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start if not length else start + 1},{length}"


def _lines(text: str, c1: int, c2: int) -> int:
    """Lines in text[c1:c2], which starts at a line start (the file's last line may lack '\n')."""
    if c2 <= c1:
        return 0
    return text.count("\n", c1, c2) + (text[c2 - 1] != "\n")


def _prefix(a: str, b: str, a1: int, a2: int, b1: int, b2: int) -> int:
    """Length of the common prefix of a[a1:a2] and b[b1:b2]: galloping, then binary search, each
    step one slice of b compared in place with str.startswith (short prefixes, the common case
    inside a diff, cost little)."""
    limit = min(a2 - a1, b2 - b1)
    lo, step = 0, 64
    while True:
        hi = min(limit, lo + step)
        if not a.startswith(b[b1 + lo:b1 + hi], a1 + lo):
            break
        if hi == limit:
            return limit
        lo, step = hi, step * 4
    hi -= 1                        # the first difference is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a.startswith(b[b1 + lo:b1 + mid], a1 + lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _suffix(a: str, b: str, a1: int, a2: int, b1: int, b2: int) -> int:
    limit = min(a2 - a1, b2 - b1)
    lo, step = 0, 64
    while True:
        hi = min(limit, lo + step)
        if not a.endswith(b[b2 - hi:b2 - lo], a1, a2 - lo):
            break
        if hi == limit:
            return limit
        lo, step = hi, step * 4
    hi -= 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a.endswith(b[b2 - mid:b2 - lo], a1, a2 - lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _opcodes(a: str, b: str) -> list[list]:
    """Opcodes as [tag, a_char1, a_char2, b_char1, b_char2], every boundary at a line start."""
    ops: list[list] = []

    def add(tag: str, ca1: int, ca2: int, cb1: int, cb2: int) -> None:
        if ca1 == ca2 and cb1 == cb2:
            return
        if ops and ops[-1][0] == tag == "equal":
            ops[-1][2], ops[-1][4] = ca2, cb2
        else:
            ops.append([tag, ca1, ca2, cb1, cb2])

    # Stretches still to align, each starting at a line start on both sides; popped left to right.
    stack = [(0, len(a), 0, len(b))]
    while stack:
        a1, a2, b1, b2 = stack.pop()
        # the common head, rounded down to whole lines
        p = _prefix(a, b, a1, a2, b1, b2)
        if p and (a1 + p < a2 or b1 + p < b2):
            nl = a.rfind("\n", a1, a1 + p)
            p = nl + 1 - a1 if nl != -1 else 0
        add("equal", a1, a1 + p, b1, b1 + p)
        a1, b1 = a1 + p, b1 + p
        if a1 == a2 and b1 == b2:
            continue
        # the common tail, rounded up to whole lines (it must start a line on both sides)
        s = _suffix(a, b, a1, a2, b1, b2)
        if s and not ((a2 - s == a1 or a[a2 - s - 1] == "\n") and (b2 - s == b1 or b[b2 - s - 1] == "\n")):
            cut = a.find("\n", a2 - s, a2)
            s = a2 - cut - 1 if cut != -1 else 0
        e1, e2 = a2 - s, b2 - s
        if a1 == e1 or b1 == e2:
            add("insert" if a1 == e1 else "delete", a1, e1, b1, e2)
        else:
            anchor = None
            if (e1 - a1) + (e2 - b1) > SMALL_CHARS and _more_lines_than(a, a1, e1, b, b1, e2, SMALL):
                anchor = _anchor(a, b, a1, e1, b1, e2)
            if anchor is not None:
                i, i_end, j, j_end = anchor
                stack.append((e1, a2, e2, b2))            # the common tail
                stack.append((i_end, e1, j_end, e2))      # right of the anchor
                stack.append((i, i_end, j, j_end))        # the anchor line itself: equal
                stack.append((a1, i, b1, j))              # left of it: next
                continue
            _match(a, b, a1, e1, b1, e2, add)
        add("equal", e1, a2, e2, b2)
    return ops


SMALL_CHARS = 2000   # below this many characters a stretch is short whatever its line count


def _more_lines_than(a: str, a1: int, a2: int, b: str, b1: int, b2: int, limit: int) -> bool:
    """Whether the two stretches hold more than `limit` lines together."""
    return a.count("\n", a1, a2) + b.count("\n", b1, b2) > limit


def _with_lines(a: str, b: str, ops: list[list]) -> list[Op]:
    """Add line numbers to character opcodes: counted through a once; b's follow from a's and
    the (short) changed stretches, since equal stretches hold as many lines on both sides."""
    out, la, lb = [], 0, 0
    for tag, ca1, ca2, cb1, cb2 in ops:
        na = _lines(a, ca1, ca2)
        nb = na if tag == "equal" else _lines(b, cb1, cb2)
        out.append((tag, la, la + na, lb, lb + nb, ca1, ca2, cb1, cb2))
        la, lb = la + na, lb + nb
    return out


def _match(a: str, b: str, a1: int, a2: int, b1: int, b2: int, add) -> None:
    """SequenceMatcher on a short stretch, split into lines. The stretch starts and ends with
    lines that differ, so one or two lines a side are simply replaced (the usual edit)."""
    if a.count("\n", a1, a2 - 1) < 2 and b.count("\n", b1, b2 - 1) < 2:
        add("replace", a1, a2, b1, b2)
        return
    xs, ys = a[a1:a2].splitlines(keepends=True), b[b1:b2].splitlines(keepends=True)
    ax = list(accumulate((len(x) for x in xs), initial=a1))   # where each line starts
    by = list(accumulate((len(y) for y in ys), initial=b1))
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, xs, ys, autojunk=False).get_opcodes():
        add(tag, ax[i1], ax[i2], by[j1], by[j2])


def _anchor(a: str, b: str, a1: int, a2: int, b1: int, b2: int) -> tuple[int, int, int, int] | None:
    """A whole line near the middle of a[a1:a2] that occurs exactly once in it and exactly once
    in b[b1:b2], both times as a whole line: its (start, end) in a and in b."""

    def line_start(pos: int) -> int:
        x = a.rfind("\n", a1, pos)
        return a1 if x == -1 else x + 1

    left = right = line_start((a1 + a2) // 2)
    starts = [left]
    while len(starts) < TRIES:
        moved = False
        nxt = a.find("\n", right, a2)
        if nxt != -1 and nxt + 1 < a2:
            right = nxt + 1
            starts.append(right)
            moved = True
        if left > a1:
            left = line_start(left - 1)
            starts.append(left)
            moved = True
        if not moved:
            break
    for start in starts:
        end = a.find("\n", start, a2)
        if end == -1:
            continue                                    # the last line, without a newline
        line = a[start:end + 1]
        if len(line) < 3 or line.isspace():
            continue
        at = b.find(line, b1, b2)
        if at == -1 or b.find(line, at + 1, b2) != -1 or a.find(line, a1, start) != -1 \
                or a.find(line, start + 1, a2) != -1:
            continue                                    # not exactly once on each side
        if at != b1 and b[at - 1] != "\n":
            continue                                    # only inside a longer line of b
        return start, end + 1, at, at + len(line)
    return None


def _grouped(a: str, b: str, ops: list[Op], n: int) -> list[list[Op]]:
    """Hunks: changes with up to n lines of context, as SequenceMatcher.get_grouped_opcodes."""
    if not ops:
        return []
    ops = list(ops)
    if ops[0][0] == "equal":
        ops[0] = _last_lines(a, b, ops[0], n)
    if ops[-1][0] == "equal":
        ops[-1] = _first_lines(a, b, ops[-1], n)
    groups, group = [], []
    for op in ops:
        if op[0] == "equal" and op[2] - op[1] > 2 * n:
            group.append(_first_lines(a, b, op, n))
            groups.append(group)
            group = []
            op = _last_lines(a, b, op, n)
        group.append(op)
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        groups.append(group)
    return groups


def _first_lines(a: str, b: str, op: Op, n: int) -> Op:
    tag, la1, la2, lb1, lb2, ca1, ca2, cb1, cb2 = op
    k = min(n, la2 - la1)
    ea, eb = ca1, cb1
    for _ in range(k):
        x = a.find("\n", ea, ca2)
        ea = ca2 if x == -1 else x + 1
        y = b.find("\n", eb, cb2)
        eb = cb2 if y == -1 else y + 1
    return tag, la1, la1 + k, lb1, lb1 + k, ca1, ea, cb1, eb


def _last_lines(a: str, b: str, op: Op, n: int) -> Op:
    tag, la1, la2, lb1, lb2, ca1, ca2, cb1, cb2 = op
    k = min(n, la2 - la1)
    sa, sb = ca2, cb2
    for _ in range(k):
        # the start of the line that ends just before sa (its '\n' is at sa - 1, or sa is the end)
        sa = a.rfind("\n", ca1, sa - 1) + 1 if sa - 1 > ca1 else ca1
        sa = max(sa, ca1)
        sb = b.rfind("\n", cb1, sb - 1) + 1 if sb - 1 > cb1 else cb1
        sb = max(sb, cb1)
    return tag, la2 - k, la2, lb2 - k, lb2, sa, ca2, sb, cb2
