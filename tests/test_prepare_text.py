"""`--text` corpora are used whole (issue 9, item 20): long documents are cut to fit a row, so the
best-fit loader sees (nearly) every training token, and the evaluation scores each validation
token once instead of looping over a split smaller than EVAL_TOKENS."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import load_prepare, run_prepare

WORDS = ("thou art the king and I thy humble servant what say you my lord to this most noble "
         "cause of ours shall we not fight upon the morrow when the sun doth rise o'er the hill").split()


def play(n_speeches: int = 500, seed: int = 7) -> str:
    """Plain text shaped like tinyshakespeare: speeches of 1-8 lines, separated by blank lines."""
    rng = random.Random(seed)
    speeches = []
    for i in range(n_speeches):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(rng.randint(1, 8))]
        speeches.append(f"SPEAKER {i % 7}:\n" + "\n".join(lines))
    return "\n\n".join(speeches)


@pytest.fixture(scope="module")
def play_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("play")
    (root / "play.txt").write_text(play())
    result = run_prepare(root / "cache", "--preset", "smoke", "--text", str(root / "play.txt"))
    assert result.returncode == 0, result.stderr
    return root / "cache"


@pytest.fixture
def prepared(play_cache: Path, monkeypatch: pytest.MonkeyPatch):
    return load_prepare(play_cache, "smoke", monkeypatch)


def _split_docs(prepare, split: str) -> list[str]:
    manifest = json.loads(prepare.MANIFEST.read_text())
    names = manifest["train"] if split == "train" else [manifest["val"]]
    return [d for name in names for d in pq.read_table(prepare.DATA_DIR / name).column("text").to_pylist()]


def _placed(prepare, tok, split: str, B: int = 8) -> tuple[int, int]:
    """(tokens of the split's documents, tokens one pass of the loader places in rows), BOS aside."""
    bos = tok.get_bos_token_id()
    total = sum(len(ids) for ids in tok.encode(_split_docs(prepare, split)))
    placed = 0
    for x, y, epoch in prepare.make_dataloader(tok, B, prepare.MAX_SEQ_LEN, split, single_pass=True):
        assert epoch == 1
        placed += int((torch.cat([x, y[:, -1:]], dim=1) != bos).sum())
    return total, placed


# ----- cutting documents to fit a row (pure) ----------------------------------------------------

def chars(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


def test_fit_documents_cuts_long_documents_at_line_ends_and_keeps_short_ones(prepared) -> None:
    long_doc = "".join(f"line {i:03d} of the speech\n" for i in range(40)) + "\n"
    short = "a short one\n"
    pieces = prepared.fit_documents([short, long_doc], chars, 100, random.Random(0))
    assert pieces[0] == short and "".join(pieces[1:]) == long_doc
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.endswith("\n") for p in pieces), "cut at line ends"
    assert len({len(p) for p in pieces[1:-1]}) > 1, "pieces vary in length, so rows can be packed tight"


def test_fit_documents_cuts_a_long_line_at_words_and_a_long_word_at_characters(prepared) -> None:
    line = " ".join(["word"] * 100)
    word = "x" * 250
    for doc in (line, word, line + "\n" + word + "\n"):
        pieces = prepared.fit_documents([doc], chars, 30, random.Random(1))
        assert "".join(pieces) == doc and all(0 < len(p) <= 30 for p in pieces)


def test_fit_documents_is_deterministic_for_a_seed(prepared) -> None:
    doc = play(40)
    cut = [prepared.fit_documents([doc], chars, 200, random.Random(3)) for _ in range(2)]
    assert cut[0] == cut[1] and "".join(cut[0]) == doc


# ----- a prepared plain-text corpus -------------------------------------------------------------

def test_prepared_documents_fit_a_row(prepared) -> None:
    tok = prepared.Tokenizer.from_directory()
    for split in ("train", "val"):
        lengths = [len(ids) for ids in tok.encode(_split_docs(prepared, split))]
        assert max(lengths) <= prepared.MAX_SEQ_LEN
    assert json.loads(prepared.MANIFEST.read_text())["doc_tokens"] == prepared.MAX_SEQ_LEN


def test_one_pass_of_the_training_loader_places_nearly_every_token(prepared) -> None:
    tok = prepared.Tokenizer.from_directory()
    total, placed = _placed(prepared, tok, "train")
    # before: ~2,000-character documents cropped to one 64-token row, about 15 % of the tokens
    assert 0.9 * total <= placed <= total


def test_evaluation_scores_each_validation_token_once(prepared, tmp_path: Path, monkeypatch, capsys) -> None:
    tok = prepared.Tokenizer.from_directory()
    total, placed = _placed(prepared, tok, "val")
    assert total < prepared.EVAL_TOKENS, "the test needs a split smaller than EVAL_TOKENS"

    class Uniform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, targets=None):
            return torch.zeros(*x.shape, tok.get_vocab_size()) + self.bias

    prepared.evaluate_bpb(Uniform(), tok, 8)
    loader = prepared.make_dataloader(tok, 8, prepared.MAX_SEQ_LEN, "val", single_pass=True)
    steps = prepared.EVAL_TOKENS // (8 * prepared.MAX_SEQ_LEN)
    _, _, scored, _ = prepared.score_logits(Uniform(), loader, prepared.get_token_bytes(), steps, tok.get_vocab_size())
    # before: 8,192 positions, the split looped over about twice
    assert 0.8 * total <= scored <= total
    assert "fewer than EVAL_TOKENS" in capsys.readouterr().out


def test_single_pass_gives_the_looping_loaders_rows_until_it_runs_out(prepared) -> None:
    """A split larger than the evaluation (climbmix's) is evaluated on upstream's rows exactly."""
    tok = prepared.Tokenizer.from_directory()
    T = prepared.MAX_SEQ_LEN
    # a buffer much smaller than the split, as 1,000 documents are to climbmix's validation shard
    once = [(x.clone(), y.clone()) for x, y, _ in prepared.make_dataloader(tok, 4, T, "val", buffer_size=8,
                                                                           single_pass=True)]
    looping = prepared.make_dataloader(tok, 4, T, "val", buffer_size=8)
    same = 0
    for (x1, y1), (x2, y2, _) in zip(once, itertools.islice(looping, len(once))):
        if not (torch.equal(x1, x2) and torch.equal(y1, y2)):
            break
        same += 1
    assert len(once) >= 5 and same >= len(once) - 2, "only the batches where the single pass drains its buffer differ"
    last_x, _ = once[-1]
    assert (last_x[:, 0] == tok.get_bos_token_id()).all()


def test_a_cache_prepared_with_uncut_documents_is_prepared_again(tmp_path: Path) -> None:
    (tmp_path / "play.txt").write_text(play(200))
    cache = tmp_path / "cache"
    assert run_prepare(cache, "--preset", "smoke", "--text", str(tmp_path / "play.txt")).returncode == 0
    manifest_path = cache / "smoke" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["doc_tokens"]  # as an older prepare.py wrote it
    manifest_path.write_text(json.dumps(manifest))
    again = run_prepare(cache, "--preset", "smoke", "--text", str(tmp_path / "play.txt"))
    assert again.returncode == 0 and "preparing it again" in again.stdout
    assert json.loads(manifest_path.read_text())["doc_tokens"] == 64
