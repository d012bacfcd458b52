"""Pure parsing and application of an LLM operator's reply.

A reply carries one idea: a title (the hypothesis), a rationale, and an edit. The edit is either
SEARCH/REPLACE blocks in the common format (bare or inside ``` fences)

    <<<<<<< SEARCH
    lines copied exactly from the parent
    =======
    the lines that replace them
    >>>>>>> REPLACE

or one fenced python block holding the whole new train.py. Blocks are applied in order: an exact
match first, then a whitespace-tolerant one (trailing whitespace ignored, then indentation too,
the replacement re-indented to where the match is); either must be unique. Anything that cannot
be used raises `EditError` with one sentence the model can act on in a repair round.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from evo.operators.base import OperatorError

MAX_REPLY_CHARS = 1_000_000   # a reply larger than this is refused unread
MAX_TITLE_CHARS = 200

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\b.*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\b.*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+.-]*)\s*$")
_LABEL = re.compile(r"^\s*(?:[#>*_-]+\s*)?(?:\*\*)?\s*(title|hypothesis|idea|rationale|reasoning|why|edit|patch|diff)"
                    r"\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)
_HEADING = re.compile(r"^\s*#{1,6}\s+(title|hypothesis|idea|rationale|reasoning|why|edit|patch|diff)\s*:?\s*$",
                      re.IGNORECASE)
_TITLE_KEYS = {"title", "hypothesis", "idea"}
_RATIONALE_KEYS = {"rationale", "reasoning", "why"}


class EditError(OperatorError):
    """The reply or its edit cannot be used (one sentence, written for the model to act on)."""


@dataclass(frozen=True)
class Block:
    search: str
    replace: str


@dataclass(frozen=True)
class ParsedReply:
    hypothesis: str
    rationale: str
    blocks: tuple[Block, ...] = ()
    full_code: str | None = None   # a whole new train.py, when the reply sends one instead of blocks


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

def parse_reply(text: str | None, *, truncated: bool = False) -> ParsedReply:
    """Split a reply into title, rationale and edit. `truncated`: the API said the reply hit its
    output limit (finish_reason "length" / stop_reason "max_tokens")."""
    if text is None or not text.strip():
        raise EditError("the reply was empty; answer with a TITLE line, a RATIONALE and the edit.")
    if len(text) > MAX_REPLY_CHARS:
        raise EditError(f"the reply was {len(text):,} characters, over the {MAX_REPLY_CHARS:,} limit; "
                        "send a short title, rationale and SEARCH/REPLACE blocks, not the same text repeated.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    blocks, block_span, unterminated = _parse_blocks(lines)
    if unterminated:
        cut = " because the reply hit the output-token limit" if truncated else ""
        raise EditError(f"the reply ended inside a SEARCH/REPLACE block{cut}; every block needs its "
                        "'=======' and '>>>>>>> REPLACE' lines, so send fewer or shorter blocks.")
    fences, open_fence = _parse_fences(lines, skip=block_span)
    if truncated:
        where = "inside a code block" if open_fence is not None else "before the reply was complete"
        raise EditError(f"the reply hit the output-token limit {where}; send a shorter answer: SEARCH/REPLACE "
                        "blocks for only the lines that change, not the whole file.")
    full_code = None
    if not blocks:
        code_fences = [f for f in fences if f[0] in ("python", "py", "python3", "")]
        if code_fences:
            full_code = max(code_fences, key=lambda f: len(f[1]))[1]
        elif open_fence is not None:
            raise EditError("the reply ended inside a code block that never closes; send SEARCH/REPLACE blocks for "
                            "the lines that change, or the whole file in one closed ```python block.")
        else:
            raise EditError("the reply has no edit: add SEARCH/REPLACE blocks (<<<<<<< SEARCH / ======= / "
                            ">>>>>>> REPLACE) or the whole new train.py in one ```python block.")
    first_edit_line = min([s for s, _ in block_span] + [f[2] for f in fences] + [len(lines)])
    while first_edit_line > 0 and _FENCE.match(lines[first_edit_line - 1]):
        first_edit_line -= 1  # the fence around the first block
    hypothesis, rationale = _title_and_rationale(lines[:first_edit_line])
    return ParsedReply(hypothesis=hypothesis, rationale=rationale, blocks=tuple(blocks), full_code=full_code)


def _parse_blocks(lines: list[str]) -> tuple[list[Block], list[tuple[int, int]], bool]:
    """SEARCH/REPLACE blocks; their line spans; whether the last one never ended."""
    blocks, spans = [], []
    i, n = 0, len(lines)
    while i < n:
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        start = i
        j = i + 1
        while j < n and not _DIVIDER.match(lines[j]):
            if _SEARCH.match(lines[j]) or _REPLACE.match(lines[j]):
                raise EditError(f"a SEARCH block (reply line {start + 1}) has no '=======' divider before the next "
                                "marker; each block is <<<<<<< SEARCH, old lines, =======, new lines, >>>>>>> REPLACE.")
            j += 1
        if j >= n:
            return blocks, spans, True
        k = j + 1
        while k < n and not _REPLACE.match(lines[k]):
            if _SEARCH.match(lines[k]):
                raise EditError(f"the block starting at reply line {start + 1} has no '>>>>>>> REPLACE' line "
                                "before the next SEARCH.")
            k += 1
        if k >= n:
            return blocks, spans, True
        search, replace = lines[i + 1:j], lines[j + 1:k]
        blocks.append(Block(_join(search), _join(replace)))
        spans.append((start, k))
        i = k + 1
    return blocks, spans, False


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _parse_fences(lines: list[str], skip: list[tuple[int, int]]) -> tuple[list[tuple[str, str, int]], int | None]:
    """Fenced code blocks outside SEARCH/REPLACE spans: (language, body, start line); and the
    start line of a fence that never closes."""
    inside = set()
    for s, e in skip:
        inside.update(range(s, e + 1))
    fences: list[tuple[str, str, int]] = []
    i, n = 0, len(lines)
    while i < n:
        m = _FENCE.match(lines[i]) if i not in inside else None
        if not m:
            i += 1
            continue
        marker, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < n and not (lines[j].strip().startswith(marker[0] * len(marker)) and lines[j].strip().strip(marker[0]) == ""):
            j += 1
        if j >= n:
            return fences, i
        if not any(k in inside for k in range(i, j + 1)):
            fences.append((lang, _join(lines[i + 1:j]), i))
        i = j + 1
    return fences, None


def _title_and_rationale(lines: list[str]) -> tuple[str, str]:
    title: str | None = None
    rationale: list[str] = []
    section = None
    for raw in lines:
        m = _LABEL.match(raw) or _HEADING.match(raw)
        if m:
            key = m.group(1).lower()
            rest = m.group(2).strip() if m.lastindex and m.lastindex >= 2 else ""
            rest = rest.strip("*_ ").strip()
            if key in _TITLE_KEYS:
                section = "title"
                if rest and title is None:
                    title = rest
                continue
            if key in _RATIONALE_KEYS:
                section = "rationale"
                if rest:
                    rationale.append(rest)
                continue
            section = "edit"
            continue
        if section == "title" and title is None and raw.strip():
            title = raw.strip()
            continue
        if section == "rationale":
            rationale.append(raw)
    if title is None:  # no label: the first line of prose
        title = next((line.strip() for line in lines if line.strip() and not _FENCE.match(line)), "")
        if rationale == [] and title:
            after = False
            for raw in lines:
                if after:
                    rationale.append(raw)
                elif raw.strip() == title:
                    after = True
    title = re.sub(r"^[#>*_\s-]+|[*_\s]+$", "", title).strip()
    if len(title) > MAX_TITLE_CHARS:
        title = title[:MAX_TITLE_CHARS - 3].rstrip() + "..."
    if not title:
        title = "(untitled change)"
    return title, "\n".join(rationale).strip()


# ---------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------

def apply_reply(parent_code: str, reply: ParsedReply) -> str:
    """The child code: the whole file the reply sent, or the parent with its blocks applied."""
    if reply.full_code is not None:
        code = reply.full_code
        if len(code) < 0.3 * len(parent_code) and "from prepare import" in parent_code and "prepare" not in code:
            raise EditError("the python block is a fragment, not a whole train.py; send SEARCH/REPLACE blocks for a "
                            "partial change, or the complete file.")
    else:
        code = apply_blocks(parent_code, reply.blocks)
    if code.strip() == parent_code.strip():
        raise EditError("the edit changes nothing; make the change the hypothesis describes.")
    return code


def apply_blocks(code: str, blocks: tuple[Block, ...] | list[Block]) -> str:
    """Apply each block in order to the code as changed by the blocks before it."""
    if not blocks:
        raise EditError("the reply has no SEARCH/REPLACE blocks.")
    for number, block in enumerate(blocks, 1):
        code = _apply_one(code, block, number, len(blocks))
    return code


def _apply_one(code: str, block: Block, number: int, total: int) -> str:
    which = f"SEARCH block {number} of {total}" if total > 1 else "the SEARCH block"
    search, replace = block.search, block.replace
    if not search.strip():
        raise EditError(f"{which} is empty; copy the exact lines to replace from the current train.py.")
    hits = _line_anchored(code if code.endswith("\n") else code + "\n", search)
    if len(hits) == 1:
        i = hits[0]
        return code[:i] + replace + code[i + len(search):]
    if len(hits) > 1:
        raise EditError(f"{which} matches {len(hits)} places in train.py; include more surrounding lines so it "
                        "matches exactly one.")
    return _apply_tolerant(code, search, replace, which)


def _line_anchored(code: str, search: str) -> list[int]:
    """Offsets where `search` (whole lines) occurs starting at the start of a line."""
    hits, start = [], 0
    while (i := code.find(search, start)) != -1:
        if i == 0 or code[i - 1] == "\n":
            hits.append(i)
        start = i + 1
    return hits


def _trim_blank(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _apply_tolerant(code: str, search: str, replace: str, which: str) -> str:
    code_lines = code.split("\n")
    search_lines = _trim_blank(search.split("\n"))
    replace_lines = replace.split("\n")
    if replace_lines and replace_lines[-1] == "":
        replace_lines = replace_lines[:-1]
    n = len(search_lines)
    for normalise in (str.rstrip, str.strip):
        wanted = [normalise(line) for line in search_lines]
        have = [normalise(line) for line in code_lines]
        hits = [i for i in range(len(have) - n + 1) if have[i:i + n] == wanted]
        if len(hits) > 1:
            raise EditError(f"{which} matches {len(hits)} places in train.py (ignoring whitespace); include more "
                            "surrounding lines so it matches exactly one.")
        if len(hits) == 1:
            i = hits[0]
            new = replace_lines
            if normalise is str.strip:
                new = _reindent(replace_lines, search_lines, code_lines[i:i + n])
            return "\n".join(code_lines[:i] + new + code_lines[i + n:])
    raise EditError(f"{which} matches nothing in train.py{_closest(code_lines, search_lines)}; copy the lines "
                    "exactly as they are in the current file.")


def _reindent(replace: list[str], search: list[str], matched: list[str]) -> list[str]:
    """Shift the replacement by the indentation difference between the SEARCH and the match."""
    first = next((k for k, line in enumerate(search) if line.strip()), 0)
    have, given = _indent(matched[first]), _indent(search[first])
    out = []
    for line in replace:
        if not line.strip():
            out.append(line)
        elif given and line.startswith(given):
            out.append(have + line[len(given):])
        elif not given:
            out.append(have + line)
        else:
            out.append(have + line.lstrip())
    return out


def _closest(code_lines: list[str], search_lines: list[str]) -> str:
    first = next((line.strip() for line in search_lines if line.strip()), "")
    stripped = [line.strip() for line in code_lines]
    match = difflib.get_close_matches(first, [s for s in stripped if s], n=1, cutoff=0.6)
    if not match:
        return f" (its first line {first[:80]!r} is not in the file)"
    line_no = stripped.index(match[0]) + 1
    if match[0] == first:
        return f" (its first line is line {line_no}, but the lines after it differ)"
    return f" (its first line {first[:80]!r} is closest to line {line_no}: {match[0][:80]!r})"
