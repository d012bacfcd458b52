'''A corpus of LLM replies written in the styles real model families answer in, each with what
evo must do with it: apply it to exactly this text, or refuse it with a message naming the fix.

The parent is tests/fixtures/corpus_parent_train.py (a frozen copy of the seed, so the corpus does
not move when the seed does). `Case.expected(parent)` is the child a correct parser produces:
the parent with each (old, new) of `changes` replaced exactly once. Used by tests/test_reply_corpus.py
and bench/reply_repairs.py (repair rounds per 100 proposals).'''

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARENT = (Path(__file__).resolve().parent.parent / "fixtures" / "corpus_parent_train.py").read_text()


@dataclass(frozen=True)
class Case:
    name: str
    style: str                               # the habit it stands for
    reply: str
    changes: tuple[tuple[str, str], ...] = ()  # applied: (old, new) replacements of the parent, in order
    title: str | None = None                 # applied: the hypothesis to store
    refused: str | None = None               # refused: words the error must contain
    truncated: bool = False                  # the API said the reply hit its output limit

    def expected(self, parent: str = PARENT) -> str:
        code = parent
        for old, new in self.changes:
            assert code.count(old) == 1, f"{self.name}: {old!r} is not unique in the parent"
            code = code.replace(old, new)
        return code


WARMDOWN = "WARMDOWN_RATIO = 0.5        # fraction of the budget spent decaying it at the end\n"
WARMDOWN_06 = "WARMDOWN_RATIO = 0.6        # fraction of the budget spent decaying it at the end\n"
DEPTH = "DEPTH = 8                     # number of transformer blocks\n"
DEPTH_10 = "DEPTH = 10                    # number of transformer blocks\n"
MATRIX = "MATRIX_LR = 0.04            # Muon, the 2-D matrices of the transformer blocks\n"
MATRIX_05 = "MATRIX_LR = 0.05            # Muon, the 2-D matrices of the transformer blocks\n"
MLP_FWD = "        return self.c_proj(F.relu(self.c_fc(x)).square())\n"
MLP_GELU = "        return self.c_proj(F.gelu(self.c_fc(x)))\n"
LR_MULT = '''def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    remaining = (1.0 - progress) / WARMDOWN_RATIO  # 1 -> 0 across the warmdown
    return remaining + (1.0 - remaining) * FINAL_LR_FRAC
'''
LR_COSINE = '''def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    remaining = (1.0 - progress) / WARMDOWN_RATIO  # 1 -> 0 across the warmdown
    remaining = 0.5 * (1.0 - math.cos(math.pi * remaining))  # cosine-shaped warmdown
    return remaining + (1.0 - remaining) * FINAL_LR_FRAC
'''
BLOCK_FWD = '''    def forward(self, x, ve, cos_sin, window, mask):
        x = x + self.attn(norm(x), ve, cos_sin, window, mask)
        x = x + self.mlp(norm(x))
        return x
'''
BLOCK_FWD_SCALED = '''    def forward(self, x, ve, cos_sin, window, mask):
        x = x + self.attn(norm(x), ve, cos_sin, window, mask)
        x = x + 0.5 * self.mlp(norm(x))
        return x
'''


def sr(search: str, replace: str, n: int = 7) -> str:
    return f"{'<' * n} SEARCH\n{search}{'=' * n}\n{replace}{'>' * n} REPLACE\n"


def whole(code: str) -> str:
    return f"```python\n{code}```\n"


_ELIDED = PARENT.split("# Schedules, all functions")[0] + \
    "# ... rest of the file unchanged ...\n"
_NO_NORM = PARENT.replace('''def norm(x):
    """RMSNorm without learned parameters."""
    return F.rms_norm(x, (x.size(-1),))


''', "")
_TAB_SEARCH = LR_MULT.replace("    ", "\t")
_TAB_REPLACE = LR_COSINE.replace("    ", "\t")

CASES: tuple[Case, ...] = (
    # ----- the requested format, as Claude and GPT answer it --------------------------------------
    Case("canonical", "Claude: the form exactly as asked",
         "TITLE: Longer warmdown (0.6)\nRATIONALE: More time at low LR helps the final loss; a worse val_bpb refutes it.\n"
         "EDIT:\n" + sr(WARMDOWN, WARMDOWN_06), ((WARMDOWN, WARMDOWN_06),), "Longer warmdown (0.6)"),
    Case("fenced-blocks", "GPT: each block inside a ```python fence",
         "TITLE: deeper and higher matrix LR\nRATIONALE: more capacity.\nEDIT:\n```python\n" + sr(DEPTH, DEPTH_10)
         + "```\n\n```python\n" + sr(MATRIX, MATRIX_05) + "```\n",
         ((DEPTH, DEPTH_10), (MATRIX, MATRIX_05)), "deeper and higher matrix LR"),
    Case("two-dependent-blocks", "a second block edits what the first wrote",
         "TITLE: cosine warmdown\nRATIONALE: smoother decay.\nEDIT:\n" + sr(LR_MULT, LR_COSINE)
         + sr("    remaining = 0.5 * (1.0 - math.cos(math.pi * remaining))  # cosine-shaped warmdown\n",
              "    remaining = 0.5 * (1.0 - math.cos(math.pi * remaining))  # cosine warmdown\n"),
         ((LR_MULT, LR_COSINE.replace("# cosine-shaped warmdown", "# cosine warmdown")),), "cosine warmdown"),
    Case("prose-after-edit", "GPT: explanation and a bash snippet after the blocks",
         "TITLE: GELU MLP\nRATIONALE: smoother activation.\n" + sr(MLP_FWD, MLP_GELU)
         + "\nThis swaps the squared ReLU. Run it with:\n```bash\nuv run train.py\n```\n",
         ((MLP_FWD, MLP_GELU),), "GELU MLP"),
    # ----- reasoning models ------------------------------------------------------------------------
    Case("think-with-draft", "DeepSeek-R1/QwQ: a draft block inside <think>, then the final one",
         "<think>\nTITLE: depth 12\nMaybe:\n" + sr(DEPTH, DEPTH.replace("DEPTH = 8 ", "DEPTH = 12"))
         + "No, too slow for the budget; a longer warmdown is safer.\n</think>\n\nTITLE: Longer warmdown\n"
         "RATIONALE: cheap and usually helps.\n" + sr(WARMDOWN, WARMDOWN_06), ((WARMDOWN, WARMDOWN_06),), "Longer warmdown"),
    Case("thinking-tag", "Claude-style <thinking> before the answer",
         "<thinking>The MLP uses relu^2; GELU might be better here. TITLE: not this</thinking>\nTITLE: GELU in the MLP\n"
         "RATIONALE: smoother gradients.\nEDIT:\n" + sr(MLP_FWD, MLP_GELU), ((MLP_FWD, MLP_GELU),), "GELU in the MLP"),
    Case("reasoning-tag", "a local model's <reasoning> block",
         "<reasoning>\nConsider depth.\n" + sr(MATRIX, "MATRIX_LR = 0.08\n") + "</reasoning>\nTITLE: Depth 10\n"
         "RATIONALE: capacity.\n" + sr(DEPTH, DEPTH_10), ((DEPTH, DEPTH_10),), "Depth 10"),
    Case("think-without-open-tag", "a server that strips <think> but leaves </think>",
         "Okay, the user wants one idea. Let me try:\n" + sr(DEPTH, DEPTH_10) + "Hmm, maybe not.\n</think>\n\n"
         "TITLE: Longer warmdown\nRATIONALE: safer.\n" + sr(WARMDOWN, WARMDOWN_06),
         ((WARMDOWN, WARMDOWN_06),), "Longer warmdown"),
    Case("think-never-closes", "a reasoning model that spent its output on thinking",
         "<think>\nLet me look at the learning rates. The Muon LR of 0.04 seems", refused="only reasoning"),
    Case("think-truncated", "reasoning cut by the output limit",
         "<think>\nLong reasoning " + "about schedules " * 50, refused="only reasoning", truncated=True),
    # ----- where the title is ----------------------------------------------------------------------
    Case("title-after-edit", "Gemini: the edit first, TITLE and RATIONALE after it",
         "EDIT:\n" + sr(DEPTH, DEPTH_10) + "\nTITLE: Ten layers\nRATIONALE: more depth at the same width.\n",
         ((DEPTH, DEPTH_10),), "Ten layers"),
    Case("numbered-bold", "markdown list with bold labels",
         "1. **Title:** Higher Muon LR\n2. **Rationale:** the matrices learn slowly.\n3. **Edit:**\n\n"
         + sr(MATRIX, MATRIX_05), ((MATRIX, MATRIX_05),), "Higher Muon LR"),
    Case("headings", "markdown headings for each part",
         "### Title\nCosine warmdown\n\n### Rationale\nA smoother end.\n\n### Edit\n" + sr(LR_MULT, LR_COSINE),
         ((LR_MULT, LR_COSINE),), "Cosine warmdown"),
    Case("bold-label-outside-colon", "**Title**: x",
         "**Title**: Half-scaled MLP residual\n**Rationale**: stabilises early training.\n" + sr(BLOCK_FWD, BLOCK_FWD_SCALED),
         ((BLOCK_FWD, BLOCK_FWD_SCALED),), "Half-scaled MLP residual"),
    Case("xml-fields", "XML-tagged fields",
         "<title>Depth 10</title>\n<rationale>more capacity</rationale>\n" + sr(DEPTH, DEPTH_10),
         ((DEPTH, DEPTH_10),), "Depth 10"),
    Case("unlabelled", "a local model that ignores the labels",
         "Increase the warmdown ratio to 0.6\nIt leaves more time at a low learning rate.\n\n" + sr(WARMDOWN, WARMDOWN_06),
         ((WARMDOWN, WARMDOWN_06),), "Increase the warmdown ratio to 0.6"),
    # ----- whitespace the model changed ------------------------------------------------------------
    Case("collapsed-comment-alignment", "the model re-aligned the trailing comments",
         "TITLE: Depth 10\nRATIONALE: capacity.\n" + sr("DEPTH = 8 # number of transformer blocks\n",
                                                       "DEPTH = 10 # number of transformer blocks\n"),
         ((DEPTH, "DEPTH = 10 # number of transformer blocks\n"),), "Depth 10"),
    Case("dropped-blank-line", "the blank lines between two functions left out of the SEARCH",
         "TITLE: Quadratic weight-decay schedule\nRATIONALE: decays faster late.\n" + sr(
             "    return MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)\n"
             "def muon_weight_decay(progress):\n    return WEIGHT_DECAY * (1.0 - progress)\n",
             "    return MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)\n\n\n"
             "def muon_weight_decay(progress):\n    return WEIGHT_DECAY * (1.0 - progress) ** 2\n"),
         (("    return WEIGHT_DECAY * (1.0 - progress)\n", "    return WEIGHT_DECAY * (1.0 - progress) ** 2\n"),),
         "Quadratic weight-decay schedule"),
    Case("tabs-for-spaces", "tabs where the file has four spaces",
         "TITLE: cosine warmdown\nRATIONALE: x.\n" + sr(_TAB_SEARCH, _TAB_REPLACE), ((LR_MULT, LR_COSINE),),
         "cosine warmdown"),
    Case("wrong-indent", "the SEARCH lost the method's indentation",
         "TITLE: GELU\nRATIONALE: x.\n" + sr(MLP_FWD.lstrip(), MLP_GELU.lstrip()), ((MLP_FWD, MLP_GELU),), "GELU"),
    Case("trailing-spaces", "trailing spaces added to SEARCH lines",
         "TITLE: GELU\nRATIONALE: x.\n" + sr(MLP_FWD.rstrip("\n") + "   \n", MLP_GELU), ((MLP_FWD, MLP_GELU),), "GELU"),
    # ----- marker lengths ----------------------------------------------------------------------------
    Case("four-char-markers", "<<<< SEARCH / ==== / >>>> REPLACE",
         "TITLE: Depth 10\nRATIONALE: x.\n" + sr(DEPTH, DEPTH_10, 4), ((DEPTH, DEPTH_10),), "Depth 10"),
    Case("ten-char-markers", "<<<<<<<<<< SEARCH",
         "TITLE: Depth 10\nRATIONALE: x.\n" + sr(DEPTH, DEPTH_10, 10), ((DEPTH, DEPTH_10),), "Depth 10"),
    Case("lowercase-markers", "<<<<<<< search",
         "TITLE: Depth 10\nRATIONALE: x.\n" + sr(DEPTH, DEPTH_10).replace("SEARCH", "search").replace("REPLACE", "replace"),
         ((DEPTH, DEPTH_10),), "Depth 10"),
    # ----- unified diffs -----------------------------------------------------------------------------
    Case("unified-diff-fenced", "a ```diff with file headers and wrong line numbers",
         "TITLE: GELU MLP\nRATIONALE: x.\nEDIT:\n```diff\n--- a/train.py\n+++ b/train.py\n@@ -300,7 +300,7 @@ class MLP\n"
         "     def forward(self, x):\n-" + MLP_FWD + "+" + MLP_GELU + " \n```\n", ((MLP_FWD, MLP_GELU),), "GELU MLP"),
    Case("unified-diff-bare", "bare diff lines, two hunks, blank context lines without their space",
         "TITLE: depth and warmdown\nRATIONALE: x.\n--- train.py\n+++ train.py\n@@ -48 +48 @@\n-" + DEPTH + "+" + DEPTH_10
         + " ASPECT_RATIO = 64             # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM\n"
         "@@ -71 +71 @@\n WARMUP_RATIO = 0.0          # fraction of the budget spent warming the learning rate up\n-"
         + WARMDOWN + "+" + WARMDOWN_06, ((DEPTH, DEPTH_10), (WARMDOWN, WARMDOWN_06)), "depth and warmdown"),
    Case("unified-diff-no-hunk-header", "---/+++ then changed lines with context, no @@",
         "TITLE: higher Muon LR\nRATIONALE: x.\n```diff\n--- train.py\n+++ train.py\n"
         " UNEMBEDDING_LR = 0.004      # AdamW, lm_head (times (model_dim / 768) ** -0.5)\n-" + MATRIX + "+" + MATRIX_05
         + "```\n", ((MATRIX, MATRIX_05),), "higher Muon LR"),
    Case("diff-insertion-without-context", "a hunk that only adds lines",
         "TITLE: x\nRATIONALE: y\n```diff\n@@ -10,0 +11,1 @@\n+import random\n```\n", refused="context"),
    # ----- whole files -------------------------------------------------------------------------------
    Case("whole-file", "a complete rewrite in one ```python block",
         "TITLE: Depth 10 (whole file)\nRATIONALE: capacity.\n" + whole(PARENT.replace(DEPTH, DEPTH_10)),
         ((DEPTH, DEPTH_10),), "Depth 10 (whole file)"),
    Case("whole-file-elided", "Qwen/Llama: 'rest of the file unchanged' in a whole file",
         "Here is the modified train.py:\n" + whole(_ELIDED.replace(DEPTH, DEPTH_10)), refused="leaves code out"),
    Case("replace-elided", "a REPLACE that says '# ... existing code ...'",
         "TITLE: cosine\nRATIONALE: x.\n" + sr(LR_MULT, "def lr_multiplier(progress):\n    # ... existing code ...\n"
                                               "    return 0.5 * (1 + math.cos(math.pi * progress))\n"),
         refused="leaves code out"),
    Case("whole-file-fragment", "only the changed function in a ```python block",
         "TITLE: cosine\nRATIONALE: x.\n" + whole(LR_COSINE), refused="fragment"),
    Case("whole-file-undefined-name", "a rewrite that dropped a helper it still calls",
         "TITLE: simpler file\nRATIONALE: x.\n" + whole(_NO_NORM), refused="never defines or imports"),
    Case("block-undefined-name", "a block that renames a definition but not its uses",
         "TITLE: rename norm\nRATIONALE: x.\n" + sr('def norm(x):\n', 'def rms_norm(x):\n'), refused="uses norm"),
    # ----- look-alikes that are the answer's own text -----------------------------------------------
    Case("think-tag-in-code", "an edit whose code holds the reasoning tags themselves",
         "TITLE: name the special tokens\nRATIONALE: for the tokenizer's benefit.\n"
         + sr(DEPTH, DEPTH + 'SPECIAL = ["<think>", "</think>"]\n'),
         ((DEPTH, DEPTH + 'SPECIAL = ["<think>", "</think>"]\n'),), "name the special tokens"),
    Case("rationale-mentions-think", "prose that talks about <think> blocks before the edit",
         "TITLE: Depth 10\nRATIONALE: I kept my reasoning out of any <think> block, as asked.\n" + sr(DEPTH, DEPTH_10),
         ((DEPTH, DEPTH_10),), "Depth 10"),
    Case("comment-that-looks-elided", "a new comment saying something stays unchanged",
         "TITLE: higher Muon LR\nRATIONALE: x.\n" + sr(MATRIX, "# keep the AdamW rates unchanged\n" + MATRIX_05),
         ((MATRIX, "# keep the AdamW rates unchanged\n" + MATRIX_05),), "higher Muon LR"),
    Case("two-diff-fences", "one ```diff per change, prose between them",
         "TITLE: LR and warmdown\nRATIONALE: x.\nFirst the LR:\n```diff\n@@ -61 +61 @@\n-" + MATRIX + "+" + MATRIX_05
         + "```\nThen the warmdown:\n```diff\n@@ -71 +71 @@\n-" + WARMDOWN + "+" + WARMDOWN_06 + "```\n",
         ((MATRIX, MATRIX_05), (WARMDOWN, WARMDOWN_06)), "LR and warmdown"),
    Case("diff-context-without-space", "a top-level context line that lost its leading space, then a second hunk",
         "TITLE: LR and warmdown\nRATIONALE: x.\n--- a/train.py\n+++ b/train.py\n@@ -60,3 +60,3 @@\n-" + MATRIX + "+"
         + MATRIX_05 + "SCALAR_LR = 0.5             # AdamW, per-layer x0 lambdas (residual lambdas get 1% of it)\n"
         "@@ -71 +71 @@\n-" + WARMDOWN + "+" + WARMDOWN_06 + "\n- longer warmdown: more time at a low rate\n",
         ((MATRIX, MATRIX_05), (WARMDOWN, WARMDOWN_06)), "LR and warmdown"),
    Case("wrong-nesting", "a SEARCH that nests a line inside the loop above it (only indentation differs)",
         "TITLE: x\nRATIONALE: y\n" + sr("def lr_multiplier(progress):\n    if progress < WARMUP_RATIO:\n"
                                        "    return progress / WARMUP_RATIO\n",
                                        "def lr_multiplier(progress):\n    if progress < WARMUP_RATIO:\n"
                                        "    return 0.0\n"), refused="matches nothing"),
    # ----- replies that cannot be used -------------------------------------------------------------
    Case("empty", "an empty completion", "", refused="empty"),
    Case("prose-only", "a chatty model that never edits",
         "I would suggest lowering the learning rate, since training seems unstable.", refused="no edit"),
    Case("search-not-in-file", "an invented SEARCH",
         "TITLE: x\nRATIONALE: y\n" + sr("MATRIX_LR = 0.02  # Muon\n", "MATRIX_LR = 0.03  # Muon\n"),
         refused="closest part of the file is line 61"),
    Case("ambiguous-search", "a SEARCH that matches two places",
         "TITLE: x\nRATIONALE: y\n" + sr("    synchronize()\n", "    torch.cuda.synchronize()\n"),
         refused="matches"),
    Case("no-op", "a REPLACE equal to its SEARCH", "TITLE: x\nRATIONALE: y\n" + sr(DEPTH, DEPTH), refused="changes nothing"),
    Case("truncated-block", "cut inside a block by the output limit",
         "TITLE: x\nRATIONALE: y\n<<<<<<< SEARCH\n" + DEPTH + "=======\n", refused="output-token limit", truncated=True),
)
