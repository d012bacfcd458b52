"""Pure parsing and application of an LLM operator's reply.

A reply carries one idea: a title (the hypothesis), a rationale, and an edit. Reasoning that a
model shows before its answer (`<think>`, `<thinking>`, `<reasoning>` blocks) is dropped first, so
a draft edit or title inside it is never used. The edit is one of

  - SEARCH/REPLACE blocks in the common format (bare or inside ``` fences; 4 to 12 marker
    characters, as models write them)

        <<<<<<< SEARCH
        lines copied from the parent
        =======
        the lines that replace them
        >>>>>>> REPLACE

  - a unified diff (```diff, or bare `---`/`+++`/`@@` lines): each hunk becomes a block, located by
    its lines, not its line numbers;
  - one fenced python block holding the whole new train.py.

Blocks are applied in order, each by the first of these tiers that matches: exactly; ignoring
trailing whitespace; ignoring indentation (the replacement re-indented to the match); collapsing
runs of whitespace inside lines; and also ignoring blank lines. Every tier demands a unique match.
A child that elides code (`# ... rest unchanged ...`) or, as a whole file, is much shorter than its
parent is refused. Anything that cannot be used raises `EditError` with what the model should do
in a repair round; a SEARCH that matches nothing shows the closest lines of the file as a diff.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from evo.operators.base import OperatorError

MAX_REPLY_CHARS = 1_000_000   # a reply larger than this is refused unread
MAX_TITLE_CHARS = 200
SHRINK_LIMIT = 0.5            # a whole file with fewer than this share of its parent's lines is a fragment
SHRINK_MIN_LINES = 40         # ... judged only for parents at least this long
CLOSEST_DIFF_LINES = 30       # lines of the closest-window diff shown when a SEARCH matches nothing
CLOSEST_MIN_SIMILARITY = 0.4  # ... a line at least this similar (difflib ratio) when no line is shared
CLOSEST_MAX_LINES = 40        # ... of a long SEARCH, its first lines are compared
TAB_WIDTH = 4

_SEARCH = re.compile(r"^\s*<{4,12}\s*SEARCH\b.*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={4,12}\s*$")
_REPLACE = re.compile(r"^\s*>{4,12}\s*REPLACE\b.*$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+.-]*)\s*$")
_KEYS = r"(title|hypothesis|idea|rationale|reasoning|why|edit|patch|diff|change|changes)"
_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:[#>*_-]+\s*)?(?:\*\*|__)?\s*" + _KEYS +
                    r"\s*(?:\*\*|__)?\s*[:：—–]\s*(?:\*\*|__)?\s*(.*)$", re.IGNORECASE)
_HEADING = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:#{1,6}\s+|\*\*)" + _KEYS + r"\s*:?\s*(?:\*\*)?\s*:?\s*$", re.IGNORECASE)
_XML_FIELD = re.compile(r"<(title|hypothesis|rationale)>\s*(.*?)\s*</\1>", re.IGNORECASE | re.DOTALL)
_TITLE_KEYS = {"title", "hypothesis", "idea"}
_TITLE_ORDER = ("title", "hypothesis", "idea", "change")
_RATIONALE_KEYS = {"rationale", "reasoning", "why"}
_REASONING_TAGS = ("think", "thinking", "reasoning", "reflection")
_LONE_CLOSE = re.compile(r"^[ \t]*</(%s)>[ \t]*$" % "|".join(_REASONING_TAGS), re.IGNORECASE | re.MULTILINE)
_REASONING_OPEN = re.compile(r"<(%s)>" % "|".join(_REASONING_TAGS), re.IGNORECASE)
# Comments models write where they leave code out: an ellipsis, or the whole comment a phrase
# saying the rest is unchanged ("# rest of the file unchanged", "# ... existing code ...").
_ELISION = re.compile(
    r"^\s*(?:#|//)\s*(?:\.\.\.|…|\[\.\.\.\]|\(\.\.\.\)).*$|"
    r"^\s*(?:#|//)\s*[(\[]?\s*(?:the\s+)?(?:rest|remainder)\s+(?:of\s+(?:the\s+)?(?:file|code|function|class|module|"
    r"script|loop|method|training loop)\s*)?(?:(?:is|are|remains?|stays?)\s+)?(?:unchanged|the same|as before|omitted)?"
    r"\s*(?:\.\.\.|…)?\s*[)\]]?\s*\.?\s*$|"
    r"^\s*(?:#|//)\s*[(\[]?\s*(?:existing|other|previous|original|remaining|unchanged)\s+(?:code|lines|functions|"
    r"definitions|methods)(?:\s+(?:here|unchanged|remains? (?:the )?same|as before|omitted|goes here))?\s*"
    r"(?:\.\.\.|…)?\s*[)\]]?\s*\.?\s*$|"
    r"^\s*(?:#|//)\s*(?:unchanged|same as before|as before|omitted for brevity)\s*(?:\.\.\.|…)?\s*\.?\s*$",
    re.IGNORECASE)
_BARE_ELLIPSIS = re.compile(r"^\s*(?:\.\.\.|…)\s*$")


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

def strip_reasoning(text: str) -> str:
    """The reply without the reasoning a model showed before answering: reasoning blocks at the
    start of the reply, and everything up to a closing tag whose opening tag the server ate (some
    serve R1-style models that way), alone on its line. A reasoning block that
    opens at the start and never closes leaves nothing: the answer never came. Tags anywhere else
    (in code, in the rationale) are the answer's own text and stay."""
    while True:
        head = text.lstrip()
        opened = _REASONING_OPEN.match(head)
        if not opened:
            break
        close = re.compile(r"</%s>" % re.escape(opened.group(1)), re.IGNORECASE).search(head, opened.end())
        if close is None:
            return ""
        text = head[close.end():]
    close = _LONE_CLOSE.search(text)
    if close and not _REASONING_OPEN.search(text, 0, close.start()):
        text = text[close.end():]
    return text


def parse_reply(text: str | None, *, truncated: bool = False) -> ParsedReply:
    """Split a reply into title, rationale and edit. `truncated`: the API said the reply hit its
    output limit (finish_reason "length" / stop_reason "max_tokens")."""
    if text is None or not text.strip():
        raise EditError("the reply was empty; answer with a TITLE line, a RATIONALE and the edit.")
    if len(text) > MAX_REPLY_CHARS:
        raise EditError(f"the reply was {len(text):,} characters, over the {MAX_REPLY_CHARS:,} limit; "
                        "send a short title, rationale and SEARCH/REPLACE blocks, not the same text repeated.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    answer = strip_reasoning(text)
    if not answer.strip():
        cut = " and hit the output-token limit" if truncated else ""
        raise EditError(f"the reply held only reasoning{cut}; after thinking, write the answer itself: TITLE, "
                        "RATIONALE and the edit, outside any <think> block.")
    lines = answer.split("\n")
    blocks, spans, unterminated = _parse_blocks(lines)
    if unterminated:
        cut = " because the reply hit the output-token limit" if truncated else ""
        raise EditError(f"the reply ended inside a SEARCH/REPLACE block{cut}; every block needs its "
                        "'=======' and '>>>>>>> REPLACE' lines, so send fewer or shorter blocks.")
    fences, open_fence = _parse_fences(lines, skip=spans)
    if truncated:
        where = "inside a code block" if open_fence is not None else "before the reply was complete"
        raise EditError(f"the reply hit the output-token limit {where}; send a shorter answer: SEARCH/REPLACE "
                        "blocks for only the lines that change, not the whole file.")
    full_code = None
    if not blocks:
        blocks, diff_spans = _diff_blocks(lines, fences)
        spans = spans + diff_spans
    if not blocks:
        code_fences = [f for f in fences if f[0] in ("python", "py", "python3", "")]
        if code_fences:
            chosen = max(code_fences, key=lambda f: len(f[1]))
            full_code = chosen[1]
        elif open_fence is not None:
            raise EditError("the reply ended inside a code block that never closes; send SEARCH/REPLACE blocks for "
                            "the lines that change, or the whole file in one closed ```python block.")
        else:
            raise EditError("the reply has no edit: add SEARCH/REPLACE blocks (<<<<<<< SEARCH / ======= / "
                            ">>>>>>> REPLACE) or the whole new train.py in one ```python block.")
    hidden = set()
    for start, end in spans + [(f[2], f[3]) for f in fences]:
        hidden.update(range(start, end + 1))
    first_edit = min([s for s, _ in spans] + [f[2] for f in fences] + [len(lines)])
    hypothesis, rationale = _title_and_rationale(answer, lines, hidden, first_edit)
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
        blocks.append(Block(_join(lines[i + 1:j]), _join(lines[j + 1:k])))
        spans.append((start, k))
        i = k + 1
    return blocks, spans, False


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _parse_fences(lines: list[str], skip: list[tuple[int, int]]) -> tuple[list[tuple[str, str, int, int]], int | None]:
    """Fenced code blocks outside SEARCH/REPLACE spans: (language, body, first line, last line);
    and the first line of a fence that never closes."""
    inside = set()
    for s, e in skip:
        inside.update(range(s, e + 1))
    fences: list[tuple[str, str, int, int]] = []
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
            fences.append((lang, _join(lines[i + 1:j]), i, j))
        i = j + 1
    return fences, None


# ----- unified diffs ---------------------------------------------------------------------------

_HUNK = re.compile(r"^@@(?:\s.*)?$")
_DIFF_HEADER = re.compile(r"^(diff --git |index [0-9a-f]|--- |\+\+\+ |new file mode|deleted file mode)")
_DIFF_LINE = re.compile(r"^(?:[ +\-\\]|@@)")


def _diff_blocks(lines: list[str], fences) -> tuple[list[Block], list[tuple[int, int]]]:
    """SEARCH/REPLACE blocks from unified diffs: every ```diff/```patch fence, else every bare
    section that starts with `---`/`+++` headers; hunks in reply order."""
    blocks: list[Block] = []
    spans: list[tuple[int, int]] = []
    for lang, body, start, end in fences:
        if lang in ("diff", "patch", "udiff"):
            found = hunks_to_blocks(body.split("\n")[:-1])
            if found:
                blocks += found
                spans.append((start, end))
    if blocks:
        return blocks, spans
    i = 0
    while i < len(lines) - 1:
        if not (lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")):
            i += 1
            continue
        end = i + 2
        while end < len(lines) and _in_bare_diff(lines, end):
            end += 1
        found = hunks_to_blocks(lines[i:end])
        if found:
            blocks += found
            spans.append((i, end - 1))
        i = end
    return blocks, spans


def _in_bare_diff(lines: list[str], i: int) -> bool:
    """Whether line i still belongs to a bare diff: a diff line, a header, or a blank or
    unprefixed line (a context line that lost its space) with more diff lines right after it."""
    line = lines[i]
    if _DIFF_HEADER.match(line) or _HUNK.match(line) or (_DIFF_LINE.match(line) and line.strip()):
        return True
    following = lines[i + 1] if i + 1 < len(lines) else ""
    return bool(following.strip()) and (_HUNK.match(following) is not None or following[:1] in (" ", "+"))


def hunks_to_blocks(diff: list[str]) -> list[Block]:
    """Each hunk of a unified diff as a block: its context and '-' lines are the SEARCH, its
    context and '+' lines the REPLACE. Line numbers are ignored (models get them wrong); a line
    without a prefix inside a hunk is context (models drop the leading space, blank lines most)."""
    hunks: list[list[str]] = []
    current: list[str] | None = None
    for line in diff:
        if _HUNK.match(line):
            current = []
            hunks.append(current)
        elif _DIFF_HEADER.match(line):
            current = None
        elif not line.startswith("\\"):
            if current is None:  # a diff without @@ lines: one hunk
                current = []
                hunks.append(current)
            current.append(line if line[:1] in (" ", "+", "-") else " " + line)
    blocks = []
    for hunk in hunks:
        while hunk and not hunk[-1].strip():
            hunk.pop()
        if not any(line[:1] in ("+", "-") for line in hunk):
            continue
        search = [line[1:] for line in hunk if line[:1] in (" ", "-")]
        replace = [line[1:] for line in hunk if line[:1] in (" ", "+")]
        if not any(s.strip() for s in search):
            raise EditError("a diff hunk adds lines without any unchanged line around them, so it cannot be placed; "
                            "include a few context lines, or use SEARCH/REPLACE blocks.")
        blocks.append(Block(_join(search), _join(replace)))
    return blocks


# ----- title and rationale ---------------------------------------------------------------------

def _title_and_rationale(answer: str, lines: list[str], hidden: set[int], first_edit: int) -> tuple[str, str]:
    """The labelled TITLE and RATIONALE wherever they are outside the edit (before or after it,
    as a markdown label, a numbered item or a heading; TITLE before HYPOTHESIS before IDEA before
    an inline CHANGE); unlabelled, the first line of prose before the edit and the prose after it."""
    titles: dict[str, str] = {}   # label -> the first title it gave
    rationale: list[str] = []
    section = None
    for number, raw in enumerate(lines):
        if number in hidden:
            section = None if section == "rationale" and rationale else section
            continue
        m = _LABEL.match(raw) or _HEADING.match(raw)
        if m:
            key = m.group(1).lower()
            rest = m.group(2).strip() if m.lastindex and m.lastindex >= 2 else ""
            rest = rest.strip("*_ ").strip()
            if key in _TITLE_KEYS or (key in ("change", "changes") and rest):
                section = key
                if rest:
                    titles.setdefault(key.rstrip("s"), rest)
                    section = None
                continue
            if key in _RATIONALE_KEYS and not rationale:
                section = "rationale"
                if rest:
                    rationale.append(rest)
                continue
            section = "edit" if key not in _RATIONALE_KEYS else None
            continue
        if section in _TITLE_KEYS and raw.strip():
            titles.setdefault(section, raw.strip())
            section = None
            continue
        if section == "rationale":
            rationale.append(raw)
    title = next((titles[k] for k in _TITLE_ORDER if k in titles), None)
    xml = {m.group(1).lower(): m.group(2) for m in _XML_FIELD.finditer(answer)}
    if title is None and (xml.get("title") or xml.get("hypothesis")):
        title = (xml.get("title") or xml.get("hypothesis")).strip().splitlines()[0]
    if not rationale and xml.get("rationale"):
        rationale = [xml["rationale"]]
    if title is None:  # no label: the first line of prose before the edit
        prose = [(i, line) for i, line in enumerate(lines[:first_edit]) if i not in hidden and line.strip()
                 and not _FENCE.match(line) and not _LABEL.match(line) and not _HEADING.match(line)]
        if prose:
            title = prose[0][1].strip()
            if not rationale:
                rationale = [line for i, line in enumerate(lines[:first_edit]) if i > prose[0][0] and i not in hidden]
    title = re.sub(r"</?\w+>", "", title or "")
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
        _check_whole_file(parent_code, code)
    else:
        code = apply_blocks(parent_code, reply.blocks)
    if code.strip() == parent_code.strip():
        raise EditError("the edit changes nothing; make the change the hypothesis describes.")
    elided = elisions(parent_code, code)
    if elided:
        raise EditError(f"the edit leaves code out ({elided[0].strip()[:80]!r} stands where code was); write out every "
                        "line the change keeps, or use SEARCH/REPLACE blocks for only the lines that change.")
    return code


def _check_whole_file(parent_code: str, code: str) -> None:
    parent_lines = sum(1 for line in parent_code.splitlines() if line.strip())
    lines = sum(1 for line in code.splitlines() if line.strip())
    if parent_lines >= SHRINK_MIN_LINES and lines < SHRINK_LIMIT * parent_lines:
        raise EditError(f"the python block has {lines} lines against the parent's {parent_lines}, so it is a fragment, "
                        "not a whole train.py; send SEARCH/REPLACE blocks for a partial change, or the complete file.")


def elisions(parent_code: str, code: str) -> list[str]:
    """Lines of the child that stand for left-out code ("# ... rest unchanged ...", a bare "..."
    that is not the body of a block it opens) and that its parent did not have."""
    had = {line.strip() for line in parent_code.splitlines()}
    found, previous = [], ""
    for line in code.splitlines():
        if line.strip() not in had:
            if _ELISION.match(line) or (_BARE_ELLIPSIS.match(line) and not previous.rstrip().endswith(":")):
                found.append(line)
        if line.strip():
            previous = line
    return found


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
    if "\t" not in code:  # the model indented with tabs where the file has spaces
        search, replace = _expand_tabs(search), _expand_tabs(replace)
    return _apply_tolerant(code, search, replace, which)


def _expand_tabs(text: str) -> str:
    return "".join(_indent(line).expandtabs(TAB_WIDTH) + line.lstrip() if line.strip() else line
                   for line in text.splitlines(keepends=True))


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


def _collapse(line: str) -> str:
    return " ".join(line.split())


# The tolerant tiers, strictest first: (how a line is compared, whether blank lines count, whether
# the replacement is re-indented to the match).
_TIERS = ((str.rstrip, True, False), (str.strip, True, True), (_collapse, True, True), (_collapse, False, True))


def _apply_tolerant(code: str, search: str, replace: str, which: str) -> str:
    code_lines = code.split("\n")
    search_lines = _trim_blank(search.split("\n"))
    replace_lines = replace.split("\n")
    if replace_lines and replace_lines[-1] == "":
        replace_lines = replace_lines[:-1]
    for normalise, blanks, reindent in _TIERS:
        # (index in the file, compared text) of every line the tier compares
        have = [(i, normalise(line)) for i, line in enumerate(code_lines) if blanks or line.strip()]
        wanted = [normalise(line) for line in search_lines if blanks or line.strip()]
        n = len(wanted)
        texts = [t for _, t in have]
        hits = [k for k in range(len(have) - n + 1) if texts[k:k + n] == wanted
                and (not reindent or _same_nesting(search_lines, [code_lines[i] for i, _ in have[k:k + n]], blanks))]
        if len(hits) > 1:
            raise EditError(f"{which} matches {len(hits)} places in train.py (ignoring whitespace); include more "
                            "surrounding lines so it matches exactly one.")
        if len(hits) == 1:
            first, last = have[hits[0]][0], have[hits[0] + n - 1][0] + 1
            new = replace_lines
            if reindent:
                new = _reindent(replace_lines, search_lines, code_lines[first:last])
            return "\n".join(code_lines[:first] + new + code_lines[last:])
    raise EditError(f"{which} matches nothing in train.py{_closest(code_lines, search_lines)}")


def _same_nesting(search: list[str], matched: list[str], blanks: bool) -> bool:
    """Whether the SEARCH nests its lines as the matched lines do (indentation relative to the
    first line): a match that ignores indentation must not move code into or out of a block."""
    given = [line for line in search if blanks or line.strip()]
    pairs = [(g, m) for g, m in zip(given, matched) if g.strip() and m.strip()]
    if not pairs:
        return True
    g0, m0 = len(_indent(pairs[0][0])), len(_indent(pairs[0][1]))
    return all(len(_indent(g)) - g0 == len(_indent(m)) - m0 for g, m in pairs)


def _reindent(replace: list[str], search: list[str], matched: list[str]) -> list[str]:
    """Shift the replacement by the indentation difference between the SEARCH and the match."""
    first = next((line for line in search if line.strip()), "")
    first_matched = next((line for line in matched if line.strip()), "")
    shift = len(_indent(first_matched)) - len(_indent(first))
    if shift == 0:
        return replace
    out = []
    for line in replace:
        width = len(_indent(line))
        out.append(" " * max(0, width + shift) + line[width:] if line.strip() else line)
    return out


def _closest(code_lines: list[str], search_lines: list[str]) -> str:
    """Where the SEARCH comes closest: the window of the file sharing most of its lines (compared
    whole, whitespace collapsed), else the line most like its first; shown as a diff."""
    search_lines = search_lines[:CLOSEST_MAX_LINES]
    wanted = [_collapse(line) for line in search_lines if line.strip()]
    if not wanted:
        return "; copy the lines exactly as they are in the current file."
    stripped = [_collapse(line) for line in code_lines]
    n = len(search_lines)
    best, best_score = None, 0.0
    for i in range(max(1, len(code_lines) - n + 1)):
        window = [s for s in stripped[i:i + n] if s]
        score = difflib.SequenceMatcher(None, wanted, window, autojunk=False).ratio()
        if score > best_score:
            best, best_score = i, score
    if best is None:
        match = difflib.get_close_matches(wanted[0], [s for s in stripped if s], n=1, cutoff=CLOSEST_MIN_SIMILARITY)
        if not match:
            return (f" (its first line {wanted[0][:80]!r} is not in the file); copy the lines exactly as they are in "
                    "the current file.")
        first = next(k for k, line in enumerate(search_lines) if line.strip())
        best = max(0, stripped.index(match[0]) - first)
    window = code_lines[best:best + n]
    where = f"line {best + 1}" if n == 1 else f"lines {best + 1}-{best + len(window)}"
    diff = list(difflib.unified_diff(search_lines, window, lineterm=""))[2:]
    if len(diff) > CLOSEST_DIFF_LINES:
        diff = diff[:CLOSEST_DIFF_LINES] + [f"... ({len(diff) - CLOSEST_DIFF_LINES} more diff lines)"]
    return (f"; the closest part of the file is {where}, which differs from it as this diff shows (- your SEARCH, "
            f"+ the file):\n```diff\n" + "\n".join(diff) + "\n```\nCopy the lines exactly as they are in the current file.")
