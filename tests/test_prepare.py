"""prepare.py: corpora, tokenizer, token bytes, dataloader, evaluator and downloads."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import load_prepare, run_prepare
from fileserver import FileServer

# Text with multi-byte characters that a small BPE never merges, so some tokens are partial UTF-8
MIXED_TEXT = "Héllo wörld! naïve café 你好，世界 🙂 Ελληνικά ĳ"


def make_corpus(n_docs: int = 300) -> list[str]:
    words = ["the", "cat", "sat", "on", "mat", "and", "dog", "ran", "to", "park", "café", "naïve"]
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(40 + i % 25)) + "." for i in range(n_docs)]


# ----- preparing from local files ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_prepare_from_local_text(tmp_path: Path, kind: str) -> None:
    docs = make_corpus()
    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        path.write_text("\n\n".join(docs))
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)))
    else:
        pq.write_table(pa.table({"text": docs}), path)
    cache = tmp_path / "cache"
    result = run_prepare(cache, "--preset", "smoke", "--text", str(path))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((cache / "smoke" / "manifest.json").read_text())
    assert manifest["source"].startswith("text:")
    val = pq.read_table(cache / "smoke" / "data" / manifest["val"]).column("text").to_pylist()
    train = pq.read_table(cache / "smoke" / "data" / manifest["train"][0]).column("text").to_pylist()
    assert val and train
    # in order, so val is a tail disjoint from train (pieces of a repetitive corpus may repeat as text)
    assert "".join(train + val).replace("\n", "").replace(" ", "") == "".join(docs).replace(" ", "")


def test_split_is_deterministic_and_a_tail(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    docs = make_corpus(200)
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    vals = []
    for run in ("a", "b"):
        cache = tmp_path / run
        assert run_prepare(cache, "--preset", "smoke", "--text", str(path)).returncode == 0
        vals.append(pq.read_table(cache / "smoke" / "data" / "val.parquet").column("text").to_pylist())
    assert vals[0] == vals[1] and "".join(vals[0]) == "".join(docs[-20:])  # the tail, cut to fit rows


def test_prepare_is_idempotent_and_no_pickle(smoke_cache: Path) -> None:
    result = run_prepare(smoke_cache, "--preset", "smoke")
    assert result.returncode == 0 and "already prepared" in result.stdout
    for file in (smoke_cache / "smoke").rglob("*"):
        if file.is_file():
            assert not file.read_bytes().startswith(b"\x80"), f"{file} looks like a pickle"
            assert file.suffix not in {".pkl", ".pt", ".pickle"}


@pytest.mark.parametrize("content, message", [
    (None, "is not a readable file"),
    ('{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
    ('{"body": "no text field"}\n', "has no string 'text' field"),
])
def test_bad_text_input_is_one_sentence_and_exit_2(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    result = run_prepare(tmp_path / "cache", "--preset", "smoke", "--text", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unprepared_preset_says_how_to_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare = load_prepare(tmp_path, "smoke", monkeypatch)
    with pytest.raises(SystemExit, match="python prepare.py --preset smoke"):
        prepare.Tokenizer.from_directory()


# ----- tokenizer and token bytes ------------------------------------------------------------

def test_tokenizer_round_trip_with_partial_utf8_tokens(smoke) -> None:
    tok = smoke.Tokenizer.from_directory()
    ids = tok.encode(MIXED_TEXT)
    assert tok.decode(ids) == MIXED_TEXT
    pieces = [tok.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == MIXED_TEXT.encode("utf-8")
    partial = [p for p in pieces if not _valid_utf8(p)]
    assert partial, "the test text should contain tokens that are not valid UTF-8 alone"


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_encode_batch_with_bos(smoke) -> None:
    tok = smoke.Tokenizer.from_directory()
    bos = tok.get_bos_token_id()
    rows = tok.encode(["a cat", "Tom had a ball."], prepend=bos)
    assert [r[0] for r in rows] == [bos, bos]
    assert tok.decode(rows[1][1:]) == "Tom had a ball."
    assert tok.get_vocab_size() == smoke.VOCAB_SIZE


def test_token_bytes_sum_to_raw_byte_length(smoke) -> None:
    tok = smoke.Tokenizer.from_directory()
    token_bytes = smoke.get_token_bytes()
    for text in [MIXED_TEXT, "Once upon a time, Tom had a red ball.", "\n\n  \t spaces"]:
        ids = tok.encode(text)
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert int(token_bytes[tok.get_bos_token_id()]) == 0


# ----- dataloader and evaluator ----------------------------------------------------------

def test_dataloader_rows_start_with_bos_and_targets_shift(smoke) -> None:
    tok = smoke.Tokenizer.from_directory()
    B, T = 4, smoke.MAX_SEQ_LEN
    loader = smoke.make_dataloader(tok, B, T, "train")
    for _ in range(3):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.long
        assert (x[:, 0] == tok.get_bos_token_id()).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert epoch >= 1
        assert x.device.type == "cpu"


def test_val_loader_cycles_epochs(smoke) -> None:
    tok = smoke.Tokenizer.from_directory()
    loader = smoke.make_dataloader(tok, 8, 64, "val", buffer_size=16)
    epochs = {next(loader)[2] for _ in range(200)}
    assert max(epochs) >= 2


class Uniform(torch.nn.Module):
    """Predicts the uniform distribution over the vocabulary (logits, as an autoresearch model
    returns them when called without targets)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab_size) + self.bias


def test_evaluate_bpb_of_uniform_model(smoke) -> None:
    tok = smoke.Tokenizer.from_directory()
    V, batch = tok.get_vocab_size(), 8
    bpb = smoke.evaluate_bpb(Uniform(V), tok, batch)

    # the same rows, counted by hand
    token_bytes = smoke.get_token_bytes()
    loader = smoke.make_dataloader(tok, batch, smoke.MAX_SEQ_LEN, "val", single_pass=True)
    tokens = nbytes = 0
    for _, y, _ in itertools.islice(loader, max(1, smoke.EVAL_TOKENS // (batch * smoke.MAX_SEQ_LEN))):
        counted = token_bytes[y.view(-1)]
        tokens += int((counted > 0).sum())
        nbytes += int(counted.sum())
    assert bpb == pytest.approx(math.log2(V) * tokens / nbytes, rel=1e-9)


def test_under_the_harness_the_model_is_handed_over_and_scored_the_same(smoke, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tok = smoke.Tokenizer.from_directory()
    model = Uniform(tok.get_vocab_size())
    with torch.no_grad():
        model.bias.fill_(0.25)
    by_hand = smoke.evaluate_bpb(model, tok, smoke.EVAL_BATCH_SIZE)
    hand_over = tmp_path / "model.pt2"
    monkeypatch.setenv(smoke.HAND_OVER_ENV, str(hand_over))
    assert math.isnan(smoke.evaluate_bpb(model, tok, 8))
    with pytest.raises(RuntimeError, match="once"):
        smoke.evaluate_bpb(model, tok, 8)  # one hand-over: no picking the best of several
    with pytest.raises(ValueError, match="validation split"):
        next(smoke.make_dataloader(tok, 8, smoke.MAX_SEQ_LEN, "val"))  # training never reads it
    monkeypatch.delenv(smoke.HAND_OVER_ENV)
    scored = smoke.score_hand_over(str(hand_over))
    assert scored["val_bpb"] == pytest.approx(by_hand, rel=1e-12)


def test_a_handed_over_model_that_sees_the_future_is_refused(smoke, tmp_path: Path, monkeypatch) -> None:
    class Bidirectional(Uniform):
        def forward(self, idx, targets=None):
            # each position is told the next token: a perfect, and impossible, prediction
            ahead = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
            return 10.0 * torch.nn.functional.one_hot(ahead, self.vocab_size).float() + self.bias

    tok = smoke.Tokenizer.from_directory()
    hand_over = tmp_path / "model.pt2"
    monkeypatch.setenv(smoke.HAND_OVER_ENV, str(hand_over))
    smoke.evaluate_bpb(Bidirectional(tok.get_vocab_size()), tok, 8)
    monkeypatch.delenv(smoke.HAND_OVER_ENV)
    with pytest.raises(smoke.Refused, match="sees the future") as refused:
        smoke.score_hand_over(str(hand_over))
    assert refused.value.reason == "invalid"


# ----- downloads against a local HTTP server --------------------------------------------------

def test_download_resumes_after_dropped_connection(smoke, tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    payload = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "srv" / "file.bin").write_bytes(payload)
    with FileServer(tmp_path / "srv") as server:
        server.drop_after["/file.bin"] = 300_000
        dest = tmp_path / "out" / "file.bin"
        smoke.download_file(f"{server.url}/file.bin", dest, backoff=0.01)
    assert dest.read_bytes() == payload
    assert server.requests[0] == ("/file.bin", None)
    resumed_from = int(server.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 300_000, "the second request continues the partial file"
    assert not dest.with_name("file.bin.part").exists()


def test_download_restarts_when_server_ignores_range(smoke, tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    payload = b"abcdefgh" * 50_000
    (tmp_path / "srv" / "f.txt").write_bytes(payload)
    with FileServer(tmp_path / "srv") as server:
        server.ignore_range = True
        server.drop_after["/f.txt"] = 1000
        dest = tmp_path / "f.txt"
        smoke.download_file(f"{server.url}/f.txt", dest, backoff=0.01)
    assert dest.read_bytes() == payload


def test_offline_download_names_text_option(smoke, tmp_path: Path) -> None:
    with pytest.raises(smoke.PrepareError, match="--text PATH"):
        smoke.download_file("http://127.0.0.1:9/none.txt", tmp_path / "none.txt", attempts=2, backoff=0.0, timeout=2)


def test_missing_remote_file_is_clear(smoke, tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    with FileServer(tmp_path / "srv") as server:
        with pytest.raises(smoke.PrepareError, match="404"):
            smoke.download_file(f"{server.url}/absent.txt", tmp_path / "a.txt", backoff=0.0)


def test_cpu_preset_downloads_tinystories(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "datasets/roneneldan/TinyStories/resolve/main"
    root.mkdir(parents=True)
    stories = [f"Story {i}. " + d for i, d in enumerate(make_corpus(400))]
    (root / "TinyStoriesV2-GPT4-valid.txt").write_text("\n<|endoftext|>\n".join(stories))
    with FileServer(tmp_path / "srv") as server:
        result = run_prepare(tmp_path / "cache", "--preset", "cpu", env={"HF_ENDPOINT": server.url})
    assert result.returncode == 0, result.stderr
    val = pq.read_table(tmp_path / "cache" / "cpu" / "data" / "val.parquet").column("text").to_pylist()
    assert val == stories[-40:]


def test_gpu_preset_downloads_climbmix_shards_and_pinned_val(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "datasets/karpathy/climbmix-400b-shuffle/resolve/main"
    root.mkdir(parents=True)
    docs = make_corpus(300)
    for shard in ("shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"):
        pq.write_table(pa.table({"text": docs}), root / shard)
    with FileServer(tmp_path / "srv") as server:
        result = run_prepare(tmp_path / "cache", "--preset", "gpu", "--num-shards", "2", env={"HF_ENDPOINT": server.url})
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "cache" / "gpu" / "manifest.json").read_text())
    assert manifest["train"] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert manifest["val"] == "shard_06542.parquet"
    fetched = sorted(path for path, _ in server.requests)
    assert fetched == [f"/datasets/karpathy/climbmix-400b-shuffle/resolve/main/{s}"
                       for s in ("shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet")]


def test_gpu_constants_match_autoresearch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = load_prepare(tmp_path, "gpu", monkeypatch)
    assert (gpu.MAX_SEQ_LEN, gpu.TIME_BUDGET, gpu.EVAL_TOKENS, gpu.VOCAB_SIZE) == (2048, 300, 40 * 524288, 8192)
    assert gpu.CLIMBMIX_VAL_SHARD == 6542
