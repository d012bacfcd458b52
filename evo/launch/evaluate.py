"""The evaluation process: scores the model a training process handed over, running only harness code.

Under the harness, prepare.evaluate_bpb does not score: it saves the trained model as a
`torch.export` program (the forward `idx -> logits` at the harness's shapes: a graph of ATen ops
and weights, none of the candidate's Python) and the training process exits. The runner starts
this process beside the training process: it imports the run's locked prepare.py (and torch) from
a folder only the harness writes, then waits for the line `go` on stdin, which the runner writes
once the hand-over file is in place (end of input instead: nothing to score, it exits). Then it
calls `score_hand_over`: a causality check on validation text, then one score on the fixed
EVAL_TOKENS, cross-entropy computed from the logits on the harness's side.

Unpickling runs code, and torch.export.load falls back to a full unpickler when the weights-only
one refuses a file, so this process forces weights-only loading before anything is read.

Usage (by the runner): echo go | python -I -m evo.launch.evaluate HAND_OVER_FILE APPARATUS_DIR
Prints one JSON line: {"val_bpb": ...} or {"fail": reason, "detail": sentence}.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    hand_over, apparatus = argv
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    sys.path.insert(0, apparatus)
    import prepare  # the run's locked copy, which the runner hashed

    if sys.stdin.readline().strip() != "go":
        return 0
    try:
        out = prepare.score_hand_over(hand_over)
    except prepare.Refused as e:
        out = {"fail": e.reason, "detail": str(e)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
