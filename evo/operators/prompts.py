"""Pure construction of the LLM operator's prompts: mutation, crossover, fix, and the repair
follow-up. Inputs are plain dataclasses (`CandidateSummary`, `Lineage`), not database rows.

Every prompt asks for ONE idea in the form `edits.parse_reply` reads:

    TITLE: <the hypothesis, one line>
    RATIONALE: <why it should help, and what result would refute it>
    EDIT:
    <SEARCH/REPLACE blocks, or the whole new train.py in one ```python block>

Stable parts come first, so that a provider's prompt cache can hold them: the system prompt (role,
research program, answer format), then, in the user message, the hardware facts and the parent's
code (`Prompt.stable_chars` marks where that prefix ends; `Prompt.cache_key` names it). What varies
from one proposal to the next follows: scores, the best candidate and its diff from the seed, the
run-wide idea ledger, the line of descent, siblings (measured and in flight), failures, the
direction this proposal should take and how bold to be.

Size is bounded: the prompt is counted in tokens and history is dropped until it fits `budget`,
least useful first: the ledger's own entries (oldest first), then its imported ones, failures,
siblings, and ancestors last. Tokens are counted with tiktoken's `o200k_base` (or
`cl100k_base`) when that encoding is already in tiktoken's local cache; tiktoken downloads its
encodings on first use and evo never triggers a download from a proposal thread, so without a
cached file the count is an approximation (see `approx_tokens`).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Mapping, Sequence

from evo.operators.base import OperatorError
from evo.core import format as fmt
from evo.core.diff import unified_diff

DEFAULT_PROMPT_TOKENS = 24_000
LOG_TAIL_LINES = 20          # lines of a failure's log kept in a mutation prompt
LOG_TAIL_CHARS = 2_000
FIX_TAIL_LINES = 60          # lines of the crashed child's log kept in a fix prompt
FIX_TAIL_CHARS = 6_000
HYPOTHESIS_CHARS = 160
REPAIR_REPLY_CHARS = 60_000  # of an unusable reply echoed back in the repair round (a whole train.py fits)
LEDGER_HYPOTHESIS_CHARS = 90 # of each idea in the run-wide ledger: a few dozen tokens a line
IN_FLIGHT = ("WAITING", "RUNNING")
HOT_SIGMAS = 1.5             # T / σ̂ at or above which a proposal is asked to be bold
COLD_SIGMAS = 0.5            # ... at or below which it is asked to refine
# Directions for concurrent proposals when the research program lists none.
DIRECTIONS = (
    "learning rates and their schedule (warmup, warmdown, final fraction)",
    "model shape for the budget: depth against width, head size, MLP ratio",
    "batch size against step count within the time budget",
    "optimizer details: Muon and AdamW settings, betas, weight decay",
    "architecture details: normalisation, residual scalings, embeddings, attention windows",
    "throughput: fewer wasted operations, so more steps fit in the budget",
    "initialisation and the scale of logits and residual branches",
)

_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


class PromptTooLarge(OperatorError):
    """Even with all history dropped the prompt exceeds its token budget."""


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CandidateSummary:
    """What a prompt needs to know about one archived candidate."""
    number: int
    hypothesis: str = ""
    val_bpb: float | None = None        # mean over its COMPLETE evaluations
    sigma: float | None = None          # std of its own evaluations (None with fewer than 2)
    state: str = "COMPLETE"             # WAITING, RUNNING, COMPLETE, FAIL, PRUNED
    fail_reason: str | None = None
    log_tail: str = ""                  # the end of its output (a traceback for a crash)
    operator: str = ""
    id: int | None = None               # global id, for the crossover's common-ancestor search
    parent_id: int | None = None
    parent2_id: int | None = None
    delta: float | None = None          # its val_bpb minus its competitor's (usually its parent's)
    accepted: bool | None = None
    n_evals: int = 0
    fail_detail: str = ""
    rationale: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)  # peak_vram_mb, num_steps, num_params_M, mfu_percent, ...


@dataclass(frozen=True)
class Lineage:
    """Everything a prompt about one candidate (`node`) needs, as the archive knows it."""
    node: CandidateSummary
    ancestors: Sequence[CandidateSummary] = ()   # its line of descent through first parents, oldest first, without node
    siblings: Sequence[CandidateSummary] = ()    # node's children already proposed (siblings of the child to make)
    failures: Sequence[CandidateSummary] = ()    # recent failed candidates near node (with log tails)
    best: CandidateSummary | None = None         # the best candidate of the run
    sigma: float | None = None                   # the run's measured noise σ (seed replicates)
    ledger: Sequence[CandidateSummary] = ()      # every other idea judged in the run, imported history first
    best_diff: str = ""                          # the best candidate's change from the seed (unified diff)


@dataclass(frozen=True)
class Prompt:
    system: str
    messages: tuple[dict, ...]        # {"role": "user" | "assistant", "content": str}
    tokens: int                       # system + messages, as counted by `count_tokens`
    omitted: int = 0                  # history entries dropped to fit the budget
    stable_chars: int = 0             # leading characters of the first user message shared by every
                                      # prompt about the same parent (the cacheable prefix, with system)
    cache_key: str = ""               # names that prefix (a hash), for providers that route by it

    def text(self) -> str:
        """The whole prompt as one text, for the audit record."""
        parts = [f"[system]\n{self.system}"] + [f"[{m['role']}]\n{m['content']}" for m in self.messages]
        return "\n\n".join(parts)

    def with_repair(self, reply: str, error: str) -> "Prompt":
        """The conversation continued: the model's unusable reply, then the error to fix."""
        note = repair_message(error)
        reply = reply or "(empty reply)"
        if len(reply) > REPAIR_REPLY_CHARS:
            reply = reply[:REPAIR_REPLY_CHARS] + f"\n[... {len(reply) - REPAIR_REPLY_CHARS:,} more characters cut]"
        messages = self.messages + ({"role": "assistant", "content": reply}, {"role": "user", "content": note})
        return Prompt(self.system, messages, self.tokens + count_tokens(reply) + count_tokens(note), self.omitted,
                      self.stable_chars, self.cache_key)


# ---------------------------------------------------------------------------
# Token counting
# ---------------------------------------------------------------------------

def _cached_tiktoken_path(name: str) -> str | None:
    """Where tiktoken keeps an encoding it downloaded before, if it is there."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")
    path = os.path.join(cache_dir, hashlib.sha1(_TIKTOKEN_URL.format(name).encode()).hexdigest())
    return path if os.path.isfile(path) else None


@lru_cache(maxsize=1)
def token_counter() -> tuple[str, Callable[[str], int]]:
    """(name, count function): tiktoken with a locally cached encoding, else `approx_tokens`."""
    try:
        import tiktoken
        for name in ("o200k_base", "cl100k_base"):
            if _cached_tiktoken_path(name):
                try:
                    enc = tiktoken.get_encoding(name)
                except Exception:  # a damaged cache file: fall through to the approximation
                    continue
                return f"tiktoken {name}", lambda text: len(enc.encode(text, disallowed_special=()))
    except ImportError:
        pass
    return "approx (cl100k pre-tokenizer pieces)", approx_tokens


def count_tokens(text: str) -> int:
    return token_counter()[1](text)


@lru_cache(maxsize=1)
def _pieces_pattern():
    try:
        import regex  # installed with tiktoken
        return regex.compile(r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
    except ImportError:  # pragma: no cover
        import re
        return re.compile(r"""'(?:[sdmt]|ll|ve|re)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")


def approx_tokens(text: str) -> int:
    """An offline estimate of BPE tokens: split the text as GPT-4's tokenizer does before BPE
    (words, 1-3 digit numbers, punctuation runs, whitespace runs) and count each piece as one
    token per 7 characters, at least one. Common words and code punctuation are single tokens in
    100k-200k vocabularies, so this tracks them closely; it overestimates long rare words."""
    return sum(max(1, math.ceil(len(p) / 7)) for p in _pieces_pattern().findall(text))


# ---------------------------------------------------------------------------
# Rendering helpers
# ---------------------------------------------------------------------------

ANSWER_FORMAT = """\
## How to answer
Answer in exactly this form, and nothing else:

TITLE: <the hypothesis in one line, under 100 characters>
RATIONALE: <why it should lower val_bpb within the budget, and what result would refute it; a few sentences>
EDIT:
<<<<<<< SEARCH
<lines copied exactly from the current train.py, enough of them to match one place>
=======
<the lines that replace them>
>>>>>>> REPLACE

Use one SEARCH/REPLACE block per place that changes, in file order; each SEARCH must match the current
file exactly once. For a sweeping change send, instead of blocks, the complete new train.py in one
```python block. Send no other code blocks."""


def _short(text: str, limit: int = HYPOTHESIS_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(text: str, lines: int, chars: int) -> str:
    kept = (text or "").rstrip().splitlines()[-lines:]
    out = "\n".join(kept)
    return out if len(out) <= chars else "..." + out[-chars:]


def _outcome(c: CandidateSummary, sigma: float | None) -> str:
    if c.state == "FAIL":
        detail = f": {_short(c.fail_detail, 120)}" if c.fail_detail else ""
        return f"FAIL({c.fail_reason or '?'}){detail}"
    if c.state == "PRUNED":
        return f"PRUNED({c.fail_reason or '?'})"
    if c.val_bpb is None:
        return c.state.lower()
    out = f"val_bpb {fmt.bpb(c.val_bpb)}"
    if c.delta is not None:
        out += f", Δ {fmt.delta(c.delta)}{_in_sigma(c.delta, sigma)}"
    if c.accepted is not None:
        out += ", kept" if c.accepted else ", rejected"
    return out


def _in_sigma(delta: float, sigma: float | None) -> str:
    return f" ({delta / sigma:+.1f}σ)" if sigma else ""


def _line(c: CandidateSummary, sigma: float | None) -> str:
    op = f" {c.operator}" if c.operator else ""
    return f"- #{c.number}{op}: {_short(c.hypothesis) or '(no hypothesis)'} -> {_outcome(c, sigma)}"


def _metrics(c: CandidateSummary) -> str:
    m = c.metrics or {}
    parts = []
    for key, label, spec in (("peak_vram_mb", "peak VRAM", "{:.0f} MB"), ("num_steps", "steps", "{:.0f}"),
                            ("num_params_M", "params", "{:.1f}M"), ("mfu_percent", "MFU", "{:.1f}%"),
                            ("total_tokens_M", "tokens", "{:.1f}M"), ("training_seconds", "training", "{:.0f} s"),
                            ("depth", "depth", "{:.0f}")):
        if m.get(key) is not None:
            parts.append(f"{label} {spec.format(m[key])}")
    return ", ".join(parts)


def _facts(facts: Mapping[str, str]) -> str:
    lines = [f"- {k}: {v}" for k, v in facts.items()]
    return "## Hardware and budget\n" + ("\n".join(lines) if lines else "- (not known)")


def _noise(sigma: float | None, parent: CandidateSummary | None) -> str:
    lines = []
    if sigma is not None:
        lines.append(f"- run-to-run noise σ of val_bpb (same code, different seed): {fmt.bpb(sigma)}")
    if parent is not None and (parent.metrics or {}).get("peak_vram_mb") is not None:
        lines.append(f"- the parent's peak VRAM: {parent.metrics['peak_vram_mb']:.0f} MB")
    return "## Noise and memory\n" + "\n".join(lines) if lines else ""


def _describe(c: CandidateSummary, sigma: float | None, title: str) -> str:
    out = [f"## {title}: candidate #{c.number}" + (f" ({c.operator})" if c.operator else "")]
    if c.hypothesis:
        out.append(f"hypothesis: {_short(c.hypothesis, 400)}")
    if c.val_bpb is not None:
        stat = f"val_bpb {fmt.bpb(c.val_bpb)}"
        if c.sigma is not None and c.n_evals > 1:
            stat += f" ± {fmt.bpb(c.sigma)} over {c.n_evals} evaluations"
        elif c.n_evals:
            stat += f" ({c.n_evals} evaluation{'s' if c.n_evals != 1 else ''})"
        out.append(stat)
    if c.delta is not None:
        out.append(f"Δ vs its parent: {fmt.delta(c.delta)}{_in_sigma(c.delta, sigma)}"
                   + (f", σ = {fmt.bpb(sigma)}" if sigma else ""))
    metrics = _metrics(c)
    if metrics:
        out.append(metrics)
    return "\n".join(out)


def _code_block(code: str) -> str:
    fence = "````" if "```" in code else "```"
    return f"{fence}python\n{code.rstrip()}\n{fence}"


def _history_sections(ancestors, siblings, failures, sigma, omitted_ancestors: int, omitted_other: int) -> str:
    parts = []
    if ancestors or omitted_ancestors:
        head = "## The parent's line of descent (oldest first)"
        lines = [f"- ({omitted_ancestors} older ancestors omitted)"] if omitted_ancestors else []
        lines += [_line(c, sigma) for c in ancestors]
        parts.append(head + "\n" + "\n".join(lines))
    measured = [c for c in siblings if c.state not in IN_FLIGHT]
    in_flight = [c for c in siblings if c.state in IN_FLIGHT]
    if measured:
        parts.append("## Already tried from this parent (do not repeat these ideas)\n"
                     + "\n".join(_line(c, sigma) for c in measured))
    if in_flight:
        parts.append("## Being evaluated now, from this parent (pick a different idea)\n"
                     + "\n".join(f"- #{c.number}: {_short(c.hypothesis)}" for c in in_flight))
    if failures:
        items = []
        for c in failures:
            entry = _line(c, sigma)
            tail = _tail(c.log_tail, LOG_TAIL_LINES, LOG_TAIL_CHARS)
            if tail:
                entry += "\n  log tail:\n" + "\n".join("    " + line for line in tail.splitlines())
            items.append(entry)
        parts.append("## Recent failures near this parent (avoid repeating them)\n" + "\n".join(items))
    if omitted_other:
        parts.append(f"({omitted_other} older history entries omitted to fit the prompt.)")
    return "\n\n".join(parts)


def ledger_lines(entries: Sequence[CandidateSummary], sigma: float | None) -> list[str]:
    """The run-wide idea ledger, one short line per distinct idea (the same hypothesis tried
    several times is one line with its count and latest outcome), imported history marked."""
    seen: dict[str, int] = {}
    lines: list[list] = []
    for c in entries:
        key = " ".join((c.hypothesis or "").lower().split())
        if not key:
            continue
        origin = "imported " if c.operator == "import" else ""
        text = f"- #{c.number} {origin}{_short(c.hypothesis, LEDGER_HYPOTHESIS_CHARS)} -> {_ledger_outcome(c, sigma)}"
        if key in seen:
            entry = lines[seen[key]]
            entry[0], entry[1] = text, entry[1] + 1
        else:
            seen[key] = len(lines)
            lines.append([text, 1])
    return [text + (f" (tried {n} times)" if n > 1 else "") for text, n in lines]


def _ledger_outcome(c: CandidateSummary, sigma: float | None) -> str:
    if c.state == "FAIL":
        return f"FAIL({c.fail_reason or '?'})"
    if c.state == "PRUNED":
        return f"PRUNED({c.fail_reason or '?'})"
    verdict = {True: "kept", False: "discarded" if c.operator == "import" else "rejected"}.get(c.accepted, c.state.lower())
    return verdict + (f", Δ {c.delta / sigma:+.1f}σ" if c.delta is not None and sigma else
                      f", Δ {fmt.delta(c.delta)}" if c.delta is not None else "")


def directions(program: str) -> tuple[str, ...]:
    """The research program's list of directions worth trying (the bullets under its heading that
    says so), or evo's own when it has none: each concurrent proposal from one parent gets one."""
    found, inside = [], False
    for line in program.splitlines():
        if line.startswith("#"):
            inside = "worth trying" in line.lower() or "direction" in line.lower()
            continue
        if inside and line.lstrip().startswith(("- ", "* ")):
            found.append(" ".join(line.strip()[2:].split()))
        elif inside and found and line.startswith("  ") and line.strip():
            found[-1] += " " + " ".join(line.split())  # a bullet continued on the next line
    return tuple(found) or DIRECTIONS


def boldness(heat: float | None) -> str:
    """How bold to be, from the chain's temperature in units of the noise σ (T / σ̂)."""
    if heat is None:
        return ""
    if heat >= HOT_SIGMAS:
        return (f"The search is hot (T ≈ {heat:.1f}σ): be bold. Aim for an expected |Δ| of 3σ or more; a "
                "structural change is welcome, and a worse result can still be kept for a while to cross a valley.")
    if heat > COLD_SIGMAS:
        return (f"The search is warm (T ≈ {heat:.1f}σ): a clear step in one direction, big enough to show "
                "through the noise (an expected |Δ| of 1-3σ).")
    return ("The search is cold: refine what won. A small, well-aimed change to what has worked in this "
            "lineage; a worse result will be rejected.")


def _steer(focus: str | None, heat: float | None) -> str:
    lines = []
    if focus:
        lines.append(f"Direction for this proposal: {focus} (other proposals from this parent take other "
                     "directions; leave this one only if the history shows it is exhausted).")
    bold = boldness(heat)
    if bold:
        lines.append(bold)
    return "## This proposal\n" + "\n".join(lines) if lines else ""


def _fit(render: Callable[[set], tuple[str, str, str]], history: list[tuple[tuple, object]], budget: int) -> Prompt:
    """Drop history in the order of its sort keys until the prompt fits. `history` holds
    (sort key, key) of every droppable entry; render(dropped keys) -> (system, stable, varying):
    the user message is stable + varying, and system + stable is the cacheable prefix."""
    order = [key for _, key in sorted(history, key=lambda item: item[0])]

    def build(k: int) -> Prompt:
        system, stable, varying = render(set(order[:k]))
        user = stable + varying
        key = hashlib.sha256((system + "\0" + stable).encode()).hexdigest()[:32]
        return Prompt(system, ({"role": "user", "content": user},), count_tokens(system) + count_tokens(user), k,
                      len(stable), key)

    full = build(0)
    if full.tokens <= budget:
        return full
    bare = build(len(order))
    if bare.tokens > budget:
        raise PromptTooLarge(f"the prompt needs {bare.tokens} tokens without any history, over the budget of "
                             f"{budget}; raise the prompt token budget.")
    lo, hi, fits = 0, len(order), {len(order): bare}  # build(lo) does not fit, build(hi) does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = build(mid)
        if p.tokens <= budget:
            hi, fits[mid] = mid, p
        else:
            lo = mid
    return fits[hi]


def _system(program: str, role: str) -> str:
    return f"{role}\n\n# The research program\n\n{program.strip()}\n\n{ANSWER_FORMAT}"


def _stable(facts: Mapping[str, str], title: str, code: str) -> str:
    return f"{_facts(facts)}\n\n## {title}\n{_code_block(code)}\n\n"


MUTATE_ROLE = ("You are the mutation operator of evo, an evolutionary search over LLM training scripts. "
               "You are given one train.py from the population and its history; you propose one new experiment.")
CROSSOVER_ROLE = ("You are the crossover operator of evo, an evolutionary search over LLM training scripts. "
                  "You are given two train.py variants that descend from a common ancestor; you combine their ideas.")
FIX_ROLE = ("You are the repair operator of evo, an evolutionary search over LLM training scripts. "
            "A candidate train.py crashed; you make the smallest change that lets its idea run.")


# ---------------------------------------------------------------------------
# The prompts
# ---------------------------------------------------------------------------

def mutation_prompt(program: str, parent_code: str, lineage: Lineage, facts: Mapping[str, str],
                    budget: int = DEFAULT_PROMPT_TOKENS, *, focus: str | None = None,
                    heat: float | None = None) -> Prompt:
    """Ask for one new idea for the parent (`lineage.node`): its code, scores and metrics, the best
    so far and its diff from the seed, the run-wide ledger of ideas, its line of descent, siblings
    tried and in flight, failures near it, the hardware facts; `focus` is this proposal's direction
    and `heat` (T / σ̂) says how bold to be."""
    node, sigma = lineage.node, lineage.sigma
    ancestors = [c for c in lineage.ancestors if c.number != node.number]
    siblings = list(lineage.siblings)
    failures = list(lineage.failures)
    shown = {c.number for c in (node, *ancestors, *siblings, *failures)}
    ledger = [c for c in lineage.ledger if c.number not in shown]
    history = [((4, c.number), ("a", i)) for i, c in enumerate(ancestors)] + \
              [((3, c.number), ("s", i)) for i, c in enumerate(siblings)] + \
              [((2, c.number), ("f", i)) for i, c in enumerate(failures)] + \
              [((1 if c.operator == "import" else 0, c.number), ("l", i)) for i, c in enumerate(ledger)]
    system = _system(program, MUTATE_ROLE)
    stable = _stable(facts, f"The parent's train.py (candidate #{node.number})", parent_code)

    def render(dropped: set) -> tuple[str, str, str]:
        keep_a = [c for i, c in enumerate(ancestors) if ("a", i) not in dropped]
        keep_s = [c for i, c in enumerate(siblings) if ("s", i) not in dropped]
        keep_f = [c for i, c in enumerate(failures) if ("f", i) not in dropped]
        keep_l = [c for i, c in enumerate(ledger) if ("l", i) not in dropped]
        omitted_a = len(ancestors) - len(keep_a)
        parts = [_describe(node, sigma, "The parent")]
        noise = _noise(sigma, node)
        if noise:
            parts.append(noise)
        if lineage.best is not None:
            best = "## Best candidate so far\n" + _line(lineage.best, sigma) + (
                f"\n  {_metrics(lineage.best)}" if _metrics(lineage.best) else "")
            if lineage.best_diff and lineage.best.number != node.number:
                best += f"\nits change from the seed (for inspiration):\n```diff\n{lineage.best_diff}```"
            parts.append(best)
        if ledger:
            lines = ledger_lines(keep_l, sigma)
            if len(keep_l) < len(ledger):
                lines.insert(0, f"- ({len(ledger) - len(keep_l)} more entries omitted)")
            parts.append("## Ideas tried elsewhere in this run (do not repeat them unless the outcome invites "
                         "a variation)\n" + "\n".join(lines))
        hist = _history_sections(keep_a, keep_s, keep_f, sigma, omitted_a,
                                 len(dropped) - omitted_a - (len(ledger) - len(keep_l)))
        if hist:
            parts.append(hist)
        steer = _steer(focus, heat)
        if steer:
            parts.append(steer)
        parts.append("Propose ONE new idea for this train.py: one that is not in the history above, is big enough to "
                     "show through the noise, and fits the budget and the device. Answer in the form given.")
        return system, stable, "\n\n".join(parts)

    return _fit(render, history, budget)


def crossover_prompt(program: str, code_a: str, code_b: str, lineage_a: Lineage, lineage_b: Lineage,
                     facts: Mapping[str, str], ancestor_code: str | None = None,
                     ancestor: CandidateSummary | None = None, budget: int = DEFAULT_PROMPT_TOKENS) -> Prompt:
    """Ask for one train.py combining the ideas of parents A and B, shown as their diffs against
    their lowest common ancestor (or A's diff to B when no ancestor is known). Edits apply to A."""
    a, b, sigma = lineage_a.node, lineage_b.node, lineage_a.sigma
    since = ancestor.number if ancestor is not None else -1
    path_a = [c for c in lineage_a.ancestors if c.number > since]
    path_b = [c for c in lineage_b.ancestors if c.number > since]
    history = [((0, c.number), ("a", i)) for i, c in enumerate(path_a)] + \
              [((0, c.number), ("b", i)) for i, c in enumerate(path_b)]
    if ancestor_code is not None and ancestor is not None:
        diffs = ("## What A changed since their common ancestor #{n} (for reading)\n```diff\n{da}```\n\n"
                 "## What B changed since their common ancestor #{n} (for reading)\n```diff\n{db}```").format(
            n=ancestor.number,
            da=unified_diff(ancestor_code, code_a, f"#{ancestor.number}", f"A #{a.number}") or "(no change)\n",
            db=unified_diff(ancestor_code, code_b, f"#{ancestor.number}", f"B #{b.number}") or "(no change)\n")
    else:
        diffs = "## How B differs from A (for reading)\n```diff\n{}```".format(
            unified_diff(code_a, code_b, f"A #{a.number}", f"B #{b.number}") or "(no change)\n")
    system = _system(program, CROSSOVER_ROLE)
    stable = _stable(facts, f"Parent A's train.py (candidate #{a.number})", code_a)

    def render(dropped: set) -> tuple[str, str, str]:
        parts = []
        noise = _noise(sigma, a)
        if noise:
            parts.append(noise)
        for label, path, key, node in (("A", path_a, "a", a), ("B", path_b, "b", b)):
            kept = [c for i, c in enumerate(path) if (key, i) not in dropped]
            lines = [_line(c, sigma) for c in kept]
            if len(kept) < len(path):
                lines.insert(0, f"- ({len(path) - len(kept)} older steps omitted)")
            desc = _describe(node, sigma, f"Parent {label}")
            parts.append(desc + ("\nits steps since the common ancestor:\n" + "\n".join(lines) if lines else ""))
        parts.append(diffs)
        parts.append("Write ONE train.py that keeps both A's and B's ideas, resolving any clash between them sensibly. "
                     "The diffs above are for reading: your edit applies to parent A's train.py (shown first), so "
                     "send SEARCH/REPLACE blocks whose SEARCH lines are copied from A's file, or the complete file "
                     "in one ```python block. The TITLE names the combination.")
        return system, stable, "\n\n".join(parts)

    return _fit(render, history, budget)


def fix_prompt(program: str, child_code: str, child: CandidateSummary, facts: Mapping[str, str],
               parent_code: str | None = None, budget: int = DEFAULT_PROMPT_TOKENS) -> Prompt:
    """Ask for the smallest change that fixes the crashed child; its TITLE must start with 'fix:'."""
    system = _system(program, FIX_ROLE)
    tail = _tail(child.log_tail, FIX_TAIL_LINES, FIX_TAIL_CHARS) or "(no output was captured)"
    change = unified_diff(parent_code, child_code, "parent", f"#{child.number}") if parent_code is not None else ""
    stable = _stable(facts, f"The crashed candidate's train.py (candidate #{child.number})", child_code)

    def render(dropped: set) -> tuple[str, str, str]:
        parts = [f"## The crashed candidate #{child.number}\nhypothesis: {_short(child.hypothesis, 400)}\n"
                 f"outcome: FAIL({child.fail_reason or 'crash'})" + (f": {child.fail_detail}" if child.fail_detail else "")]
        if change and "diff" not in dropped:
            parts.append(f"## Its change from its parent\n```diff\n{change}```")
        parts.append("## The end of its output\n```text\n" + tail + "\n```")
        parts.append("Make the smallest change that fixes this error while keeping the candidate's idea. The TITLE "
                     "must start with 'fix:' and name the error; prefer SEARCH/REPLACE blocks.")
        return system, stable, "\n\n".join(parts)

    return _fit(render, [((0, 0), "diff")] if change else [], budget)


def repair_message(error: str) -> str:
    return (f"Your reply could not be used: {error}\n\nReply again with the complete answer in the same form "
            "(TITLE, RATIONALE, EDIT). Every SEARCH block must copy lines exactly from the current train.py shown "
            "above, and match it exactly once.")
