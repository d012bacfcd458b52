"""
evo's locked apparatus: data, tokenizer, dataloader and the val_bpb evaluator.

Every candidate imports this file and is scored by `evaluate_bpb`; candidates never edit it,
and the harness checks its hash before and after each evaluation. Under the harness evaluate_bpb
does not score: it hands the trained model over (a torch.export program of `idx -> logits`) and
the harness scores it in a process of its own with `score_logits`, the one definition of the metric.

    python prepare.py --preset smoke                     # seconds, no network (tests)
    python prepare.py --preset cpu                       # TinyStories, for CPUs and small GPUs
    python prepare.py --preset gpu                       # autoresearch's exact setup (climbmix)
    python prepare.py --preset cpu --text corpus.txt     # local files instead of a download

Corpora written here (local files, TinyStories, the smoke corpus) are cut into documents of at
most MAX_SEQ_LEN tokens, so the best-fit loader sees nearly all of them; climbmix is read as
upstream has it. The evaluator reads the validation split once and never loops over it.

The active preset comes from EVO_PRESET (default "gpu"); data and tokenizer live in
EVO_CACHE_DIR (default ~/.cache/evo), one folder per preset. Nothing in the cache is a pickle:
the BPE ranks are plain text and the tiktoken Encoding is rebuilt on load.

The names an autoresearch train.py imports (MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, VOCAB_SIZE,
Tokenizer, get_token_bytes, make_dataloader, evaluate_bpb) mean what they mean there.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import tiktoken
import torch

# ---------------------------------------------------------------------------
# Presets (fixed: a candidate is compared only with candidates of the same preset)
# ---------------------------------------------------------------------------

# Everything that differs between presets, as one literal: the harness reads it with
# ast.literal_eval, without executing this file (no torch in the harness), so it must stay a
# literal (plain numbers and strings, no arithmetic or names).
#   source, max_seq_len, time_budget (s), eval_tokens, vocab_size: the apparatus itself;
#   eval_batch_size: rows per batch when the harness scores a model (sized for the logits' memory);
#   startup_allowance, eval_allowance: seconds the harness allows beyond time_budget, from start to
#     the first timed step and from the end of training to the summary (RunConfig.allowances
#     in evo/config.py says why they are this large);
#   seed_train: the model and batch size the harness writes into seed_train.py when a run starts.
PRESETS: dict[str, dict] = {
    # autoresearch's setup exactly, so val_bpb compares with a user's greedy results.tsv
    "gpu": {
        "source": "climbmix", "max_seq_len": 2048, "time_budget": 300,
        "eval_tokens": 20971520,  # 40 * 524288
        "vocab_size": 8192, "eval_batch_size": 32, "startup_allowance": 300.0, "eval_allowance": 240.0,
        # ~50M parameters, 512 wide; 2**19 tokens per step in 2 micro-batches of 128 x 2048
        "seed_train": {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL",
                       "TOTAL_BATCH_SIZE": 524288, "DEVICE_BATCH_SIZE": 128},
    },
    # CPUs, laptops, small GPUs; numbers measured on a 2-core CPU (docs/benchmarks.md)
    "cpu": {
        "source": "tinystories", "max_seq_len": 256, "time_budget": 120,
        "eval_tokens": 131072,  # 64 * 256 * 8
        "vocab_size": 2048, "eval_batch_size": 8, "startup_allowance": 120.0, "eval_allowance": 240.0,
        # ~1.8M parameters, 128 wide; about 0.25 s per step on 2 CPU cores
        "seed_train": {"DEPTH": 4, "ASPECT_RATIO": 32, "HEAD_DIM": 32, "WINDOW_PATTERN": "SSSL",
                       "TOTAL_BATCH_SIZE": 2048, "DEVICE_BATCH_SIZE": 8},
    },
    # seconds end to end, no network: a generated corpus
    "smoke": {
        "source": "generated", "max_seq_len": 64, "time_budget": 8,
        "eval_tokens": 8192,  # 16 * 8 * 64
        "vocab_size": 384, "eval_batch_size": 8, "startup_allowance": 180.0, "eval_allowance": 120.0,
        # ~0.2M parameters, 64 wide; a few hundred steps in 8 seconds
        "seed_train": {"DEPTH": 2, "ASPECT_RATIO": 32, "HEAD_DIM": 32, "WINDOW_PATTERN": "SSSL",
                       "TOTAL_BATCH_SIZE": 512, "DEVICE_BATCH_SIZE": 8},
    },
}

PRESET = os.environ.get("EVO_PRESET", "gpu")
if PRESET not in PRESETS:
    raise SystemExit(f"prepare.py: unknown EVO_PRESET {PRESET!r}; choose one of {', '.join(PRESETS)}.")
_P = PRESETS[PRESET]

MAX_SEQ_LEN: int = _P["max_seq_len"]    # context length of evaluation rows
TIME_BUDGET: int = _P["time_budget"]    # training wall-clock budget in seconds
EVAL_TOKENS: int = _P["eval_tokens"]    # validation tokens scored by evaluate_bpb
VOCAB_SIZE: int = _P["vocab_size"]      # BPE vocabulary including special tokens
EVAL_BATCH_SIZE: int = _P["eval_batch_size"]  # rows per batch when the harness scores a model

# Where prepared data lives, as literals the harness also reads: CACHE_ROOT/<preset>/MANIFEST_NAME
CACHE_ENV = "EVO_CACHE_DIR"
DEFAULT_CACHE_ROOT = "~/.cache/evo"
MANIFEST_NAME = "manifest.json"
CACHE_ROOT = Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE_ROOT)).expanduser()
CACHE_DIR = CACHE_ROOT / PRESET
DATA_DIR = CACHE_DIR / "data"
TOKENIZER_DIR = CACHE_DIR / "tokenizer"
MANIFEST = CACHE_DIR / MANIFEST_NAME

# GPT-4 style split with \p{N}{1,2}, as autoresearch uses
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]

# Remote sources; HF_ENDPOINT points them at a mirror, as huggingface_hub does
HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
CLIMBMIX_URL = f"{HF_ENDPOINT}/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_MAX_SHARD = 6542
CLIMBMIX_VAL_SHARD = CLIMBMIX_MAX_SHARD  # pinned validation shard, as upstream
TINYSTORIES_URL = f"{HF_ENDPOINT}/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt"

TOKENIZER_MAX_CHARS = 1_000_000_000  # text fed to BPE training (upstream's numbers)
TOKENIZER_DOC_CAP = 10_000
VAL_FRACTION = 0.1                    # tail of a local corpus held out for validation
DOC_CHARS = 2_000                     # plain text is cut into documents of about this size
ROWS_PER_GROUP = 1024                 # parquet row group size of shards we write

# Under the harness, the file evaluate_bpb hands the trained model over to: the harness scores it
# in a process of its own (evo/launch/evaluate.py), so nothing the candidate runs touches the score.
HAND_OVER_ENV = "EVO_HAND_OVER"


class PrepareError(Exception):
    """A problem the user can fix; main() prints it as one sentence."""


def get_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU; EVO_DEVICE overrides."""
    if os.environ.get("EVO_DEVICE"):
        return torch.device(os.environ["EVO_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------
# Downloads: retried, resumed from partial files, one clear sentence when offline
# ---------------------------------------------------------------------------

def download_file(url: str, dest: Path, attempts: int = 5, backoff: float = 2.0, timeout: float = 30.0) -> None:
    """Fetch url to dest. A partial file is resumed with an HTTP Range request."""
    import requests

    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
                if response.status_code == 416:  # the part file already holds everything
                    break
                if response.status_code == 404:
                    raise PrepareError(f"{url} does not exist (HTTP 404).")
                response.raise_for_status()
                if offset and response.status_code != 206:
                    offset = 0  # the server ignored the Range header: start over
                expected = response.headers.get("Content-Length")
                expected_total = offset + int(expected) if expected is not None else None
                with open(part, "ab" if offset else "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
            if expected_total is not None and part.stat().st_size != expected_total:
                raise OSError(f"transfer ended at {part.stat().st_size} of {expected_total} bytes")
            break
        except PrepareError:
            raise
        except (requests.RequestException, OSError) as e:
            last_error = e
            print(f"  attempt {attempt}/{attempts} for {dest.name} failed: {e}", flush=True)
            if attempt < attempts:
                time.sleep(backoff * 2 ** (attempt - 1))
    else:
        host = re.sub(r"^(\w+://[^/]+).*$", r"\1", url)
        raise PrepareError(
            f"could not download {dest.name} from {host} after {attempts} attempts ({type(last_error).__name__}); "
            f"without network, prepare from local files with --text PATH."
        )
    part.rename(dest)


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def download_climbmix(num_shards: int, workers: int) -> tuple[list[Path], Path]:
    ids = list(range(min(num_shards, CLIMBMIX_MAX_SHARD)))
    val = DATA_DIR / _shard_name(CLIMBMIX_VAL_SHARD)
    wanted = [DATA_DIR / _shard_name(i) for i in ids] + [val]
    missing = [p for p in wanted if not p.exists()]
    print(f"Data: {len(wanted) - len(missing)}/{len(wanted)} climbmix shards present, downloading {len(missing)}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing) or 1))) as pool:
        list(pool.map(lambda p: download_file(f"{CLIMBMIX_URL}/{p.name}", p), missing))
    return wanted[:-1], val


# ---------------------------------------------------------------------------
# Local corpora: plain text, JSONL ("text" field), parquet ("text" column)
# ---------------------------------------------------------------------------

def _split_plain_text(text: str) -> list[str]:
    """TinyStories-style files separate documents with <|endoftext|>; other text is cut at blank
    lines into documents of about DOC_CHARS, so a document keeps its local context."""
    if "<|endoftext|>" in text:
        return [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    docs, current = [], ""
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        current = f"{current}\n\n{para}" if current else para
        if len(current) >= DOC_CHARS:
            docs.append(current)
            current = ""
    if current:
        docs.append(current)
    return docs


def read_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise PrepareError(f"--text: {path} is not a readable file.")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            table = pq.read_table(path)
            if "text" not in table.column_names:
                raise PrepareError(f"--text: {path} has no 'text' column.")
            return [t for t in table.column("text").to_pylist() if t]
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
        raise PrepareError(f"--text: cannot read {path} ({type(e).__name__}: {e}).") from e
    if name.endswith((".jsonl", ".ndjson")):
        docs = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"--text: {path} line {lineno} is not JSON ({e.msg}).") from e
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise PrepareError(f"--text: {path} line {lineno} has no string 'text' field.")
            if record["text"]:
                docs.append(record["text"])
        return docs
    return _split_plain_text(raw)


_LINE = re.compile(r"[^\n]*\n*")  # a line with the blank lines after it: no piece is only blank lines
_WORD = re.compile(r"\S+\s*|\s+")


def _cut(text: str, level: int) -> list[str]:
    """text in consecutive units that join back to it: lines, then words, then characters."""
    if level == 0:
        return [line for line in _LINE.findall(text) if line]
    if level == 1:
        return _WORD.findall(text)
    return list(text)


def fit_documents(docs: list[str], count_tokens: Callable[[list[str]], list[int]], max_tokens: int,
                  rng: random.Random, level: int = 0) -> list[str]:
    """Each document of more than max_tokens tokens cut into consecutive pieces of at most
    max_tokens, at line ends (word ends inside a longer line); joined in order, the pieces give
    back the document. count_tokens gives the token count of each of a list of texts.

    Why: a dataloader row holds BOS + max_tokens tokens, and the best-fit packer crops a document
    that does not fit, losing its rest. Pieces aim at lengths drawn between max_tokens / 16 and
    max_tokens, because pieces of one size leave every row a gap that only a crop can fill."""
    out: list[str] = []
    for doc, n in zip(docs, count_tokens(docs)):
        if n <= max_tokens:
            out.append(doc)
            continue
        units = _cut(doc, level)
        groups: list[list[str]] = []
        used = target = 0
        for unit, m in zip(units, count_tokens(units)):
            if not groups or used + m > target:
                groups.append([])
                used, target = 0, rng.randint(max(1, max_tokens // 16), max_tokens)
            groups[-1].append(unit)
            used += m
        # A group over the limit (one unit too long, or units whose joint tokenization is longer
        # than their sum) is cut again: halved at this level, or cut finer when it is one unit.
        pieces = ["".join(g) for g in groups]
        for group, piece, m in zip(groups, pieces, count_tokens(pieces)):
            if m <= max_tokens:
                out.append(piece)
            elif len(group) == 1:  # one line (or word) alone is too long: cut it finer
                out.extend(fit_documents([piece], count_tokens, max_tokens, rng, level + 1) if level < 2 else [piece])
            else:
                half = len(group) // 2
                out.extend(fit_documents(["".join(group[:half]), "".join(group[half:])], count_tokens, max_tokens,
                                         rng, level))
    return out


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """Deterministic split: the last VAL_FRACTION of documents (at least one) is validation.
    A contiguous tail, not a random sample, so neighbouring paragraphs do not leak across."""
    if len(docs) < 2:
        raise PrepareError("the corpus needs at least 2 documents (one to train on, one to validate).")
    n_val = max(1, int(len(docs) * VAL_FRACTION))
    return docs[:-n_val], docs[-n_val:]


def write_shard(docs: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), path, row_group_size=ROWS_PER_GROUP)


def generated_corpus(num_docs: int = 1200, seed: int = 1234) -> list[str]:
    """A small, learnable corpus of templated stories: the smoke preset needs no network and no files."""
    rng = random.Random(seed)
    names = ["Tom", "Mia", "Sam", "Lily", "Ben", "Anna", "Max", "Zoe"]
    things = ["ball", "kite", "cat", "dog", "book", "cake", "hat", "boat"]
    colours = ["red", "blue", "green", "yellow", "big", "small", "new", "old"]
    places = ["park", "garden", "beach", "forest", "school", "shop", "river", "house"]
    feelings = ["happy", "sad", "tired", "excited", "scared", "proud"]
    docs = []
    for _ in range(num_docs):
        a, b = rng.sample(names, 2)
        thing, colour, place, feeling = rng.choice(things), rng.choice(colours), rng.choice(places), rng.choice(feelings)
        lines = [f"Once upon a time, {a} had a {colour} {thing}.",
                 f"{a} took the {thing} to the {place}.",
                 f"At the {place}, {a} met {b}.",
                 rng.choice([f"{b} wanted to play with the {thing}.", f"{b} did not like the {thing}."]),
                 f"{a} felt {feeling}.",
                 rng.choice([f"They played until the sun went down.", f"Then {a} went home with the {thing}."]),
                 "The end."]
        docs.append(" ".join(lines))
    return docs


# ---------------------------------------------------------------------------
# Tokenizer: trained with rustbpe, stored as plain "base64(token) rank" lines
# ---------------------------------------------------------------------------

def _iter_training_text(files: list[Path], max_chars: int = TOKENIZER_MAX_CHARS, doc_cap: int = TOKENIZER_DOC_CAP) -> Iterator[str]:
    nchars = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                doc = text[:doc_cap]
                nchars += len(doc)
                yield doc
                if nchars >= max_chars:
                    return


def train_tokenizer(train_files: list[Path], vocab_size: int = VOCAB_SIZE) -> None:
    import rustbpe

    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(_iter_training_text(train_files), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = sorted(((bytes(tok), rank) for tok, rank in bpe.get_mergeable_ranks()), key=lambda kv: kv[1])
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in ranks]
    (TOKENIZER_DIR / "ranks.tiktoken").write_text("\n".join(lines) + "\n")
    (TOKENIZER_DIR / "tokenizer.json").write_text(json.dumps(
        {"pattern": bpe.get_pattern(), "special_tokens": SPECIAL_TOKENS, "bos_token": BOS_TOKEN}, indent=1))
    n_vocab = len(ranks) + len(SPECIAL_TOKENS)
    note = "" if n_vocab == vocab_size else f" (asked for {vocab_size}: the corpus ran out of merges)"
    print(f"Tokenizer: {n_vocab} tokens trained in {time.time() - t0:.1f}s{note}", flush=True)


def _load_encoding(tokenizer_dir: Path) -> tiktoken.Encoding:
    tokenizer_dir = Path(tokenizer_dir)
    try:
        meta = json.loads((tokenizer_dir / "tokenizer.json").read_text())
        ranks = {}
        for line in (tokenizer_dir / "ranks.tiktoken").read_text().splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    except FileNotFoundError:
        raise SystemExit(
            f"prepare.py: no tokenizer in {tokenizer_dir}; run `python prepare.py --preset {PRESET}` first.") from None
    specials = {name: len(ranks) + i for i, name in enumerate(meta["special_tokens"])}
    return tiktoken.Encoding(name=f"evo-{PRESET}", pat_str=meta["pattern"], mergeable_ranks=ranks, special_tokens=specials)


class Tokenizer:
    """The BPE tokenizer candidates train with; same interface as autoresearch's."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, tokenizer_dir: str | Path = TOKENIZER_DIR) -> "Tokenizer":
        return cls(_load_encoding(Path(tokenizer_dir)))

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text: str | list[str], prepend: int | None = None, num_threads: int = 8):
        if prepend is not None and not isinstance(prepend, int):
            raise TypeError(f"prepend must be an int token id, got {type(prepend)}")
        head = [prepend] if prepend is not None else []
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text)
        if isinstance(text, list):
            return [head + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]
        raise ValueError(f"Invalid input type: {type(text)}")

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Exact bytes, for tokens that are not valid UTF-8 on their own."""
        return self.enc.decode_bytes(ids)


_TOKEN_BYTES: torch.Tensor | None = None


def get_token_bytes(device: str | torch.device = "cpu") -> torch.Tensor:
    """Raw UTF-8 byte length of every token id (0 for special tokens).

    Counted from the token's bytes themselves, never from its decoded string: a token holding part
    of a multi-byte character would decode to U+FFFD (3 bytes) and make bpb look better than it is.
    """
    global _TOKEN_BYTES
    if _TOKEN_BYTES is None:
        enc = _load_encoding(TOKENIZER_DIR)
        n_ranked = enc.n_vocab - len(enc.special_tokens_set)  # special tokens come last
        lengths = [len(enc.decode_single_token_bytes(i)) if i < n_ranked else 0 for i in range(enc.n_vocab)]
        _TOKEN_BYTES = torch.tensor(lengths, dtype=torch.int32)
    return _TOKEN_BYTES.to(device)


# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned rows with best-fit packing (no padding)
# ---------------------------------------------------------------------------

def _read_manifest() -> dict:
    if not MANIFEST.exists():
        raise SystemExit(f"prepare.py: preset {PRESET!r} is not prepared in {CACHE_DIR}; run `python prepare.py --preset {PRESET}` first.")
    return json.loads(MANIFEST.read_text())


def _document_batches(split: str, tokenizer_batch_size: int = 128, loop: bool = True) -> Iterator[tuple[list[str], int]]:
    """The split's documents in batches, with the epoch they belong to: endlessly, or once."""
    manifest = _read_manifest()
    paths = [DATA_DIR / name for name in (manifest["train"] if split == "train" else [manifest["val"]])]
    epoch = 1
    while True:
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                docs = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(docs), tokenizer_batch_size):
                    yield docs[i:i + tokenizer_batch_size], epoch
        if not loop:
            return
        epoch += 1


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = 1000,
                    device: str | torch.device | None = None,
                    single_pass: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Yields (inputs, targets, epoch): (B, T) long tensors on `device` (default get_device()).

    Every row starts with BOS. Each slot of a row takes the longest buffered document that fits;
    when none fits, the shortest is cropped to fill the row exactly, so nothing is padded.
    With single_pass, every document is read once: the last batch is completed with BOS tokens
    (special: 0 bytes, so evaluate_bpb counts none of them) and the loader then stops.
    """
    assert split in ("train", "val"), split
    if split == "val" and os.environ.get(HAND_OVER_ENV):
        raise ValueError("the validation split is the harness's: under evo, training reads only 'train'")
    device = torch.device(device) if device is not None else get_device()
    row_capacity = T + 1
    batches = _document_batches(split, loop=not single_pass)
    bos = tokenizer.get_bos_token_id()
    doc_buffer: list[list[int]] = []
    epoch = 1
    exhausted = False  # single_pass only: every document has entered the buffer

    pin = device.type == "cuda"  # pinned host memory exists only for CUDA copies
    row_buffer = torch.empty((B, row_capacity), dtype=torch.long)
    host = torch.empty(2 * B * T, dtype=torch.long, pin_memory=pin)
    dev = host if device.type == "cpu" else torch.empty(2 * B * T, dtype=torch.long, device=device)
    host_inputs, host_targets = host[:B * T].view(B, T), host[B * T:].view(B, T)
    inputs, targets = dev[:B * T].view(B, T), dev[B * T:].view(B, T)

    copied: torch.cuda.Event | None = None  # the last host-to-device copy, on CUDA
    while True:
        if copied is not None:
            copied.synchronize()  # the pinned host buffer is still being read by the previous async copy
        if exhausted and not doc_buffer:
            return
        for row in range(B):
            pos = 0
            while pos < row_capacity:
                while not exhausted and len(doc_buffer) < buffer_size:
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    docs, epoch = batch
                    doc_buffer.extend(tokenizer.encode(docs, prepend=bos))
                if not doc_buffer:
                    row_buffer[row, pos:] = bos
                    break
                remaining = row_capacity - pos
                best = max((i for i, d in enumerate(doc_buffer) if len(d) <= remaining),
                           key=lambda i: len(doc_buffer[i]), default=-1)
                if best < 0:
                    best = min(range(len(doc_buffer)), key=lambda i: len(doc_buffer[i]))
                doc = doc_buffer.pop(best)[:remaining]
                row_buffer[row, pos:pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                pos += len(doc)
        host_inputs.copy_(row_buffer[:, :-1])
        host_targets.copy_(row_buffer[:, 1:])
        if dev is not host:
            dev.copy_(host, non_blocking=pin)
            if pin:
                copied = torch.cuda.Event()
                copied.record()
        yield inputs, targets, epoch


# ---------------------------------------------------------------------------
# Evaluation (the fixed metric)
# ---------------------------------------------------------------------------

def score_logits(forward: Callable[[torch.Tensor], torch.Tensor], batches, token_bytes: torch.Tensor,
                 steps: int, vocab_size: int) -> tuple[float, int, int, int]:
    """(nats, bytes, tokens, batches) of `forward`'s logits over at most `steps` (inputs, targets)
    batches: cross-entropy in float64 from the logits, bytes from the tokens themselves; special
    tokens (0 bytes) count in neither. Raises ValueError for logits of the wrong shape or not finite.
    The one definition of the metric, used in-process (by hand) and by the harness's evaluator."""
    nats = torch.zeros((), dtype=torch.float64, device=token_bytes.device)
    nbytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    ntokens = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    done = 0
    for x, y, *_ in batches:
        logits = forward(x)
        if tuple(logits.shape) != (*x.shape, vocab_size):
            raise ValueError(f"the model returns logits of shape {tuple(logits.shape)}, not (batch, sequence, "
                             f"vocabulary) = {(*x.shape, vocab_size)}")
        if not torch.isfinite(logits).all():
            raise ValueError("the model returns non-finite logits on validation text")
        loss = torch.nn.functional.cross_entropy(logits.double().reshape(-1, vocab_size), y.reshape(-1),
                                                 reduction="none")
        weight = token_bytes[y.reshape(-1)]
        nats += (loss * (weight > 0)).sum()
        nbytes += weight.sum()
        ntokens += (weight > 0).sum()
        done += 1
        if done == steps:
            break
    return nats.item(), int(nbytes.item()), int(ntokens.item()), done


def bits_per_byte(nats: float, nbytes: int) -> float:
    return nats / (math.log(2) * nbytes)


class Refused(Exception):
    """A handed-over model the harness cannot score; `reason` is the archive's fail reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


CAUSAL_TOLERANCE = 1e-3                 # change of earlier logits allowed, relative to their scale (fp32 noise, TF32)
CAUSAL_CUTS = (1, 0.25, 0.5, 0.75, -1)  # where a probe replaces the future: after the first token ... before the last


def _probe_position(fraction: float, seq_len: int) -> int:
    return seq_len - 1 if fraction == -1 else max(1, min(seq_len - 1, int(fraction * seq_len)))


def causality_violation(forward: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> str | None:
    """The sentence saying how `forward` sees what a language model must not, or None.

    `rows` is a batch of real token rows (at least 2): probes swap futures between rows, so every
    input is real text and a model cannot tell a probe from an evaluation batch."""
    base = forward(rows).float()
    scale = base.abs().max().item() + 1.0
    shifted = rows.roll(1, dims=0)
    for fraction in CAUSAL_CUTS:
        t = _probe_position(fraction, rows.shape[1])
        probe = rows.clone()
        probe[:, t:] = shifted[:, t:]
        if torch.equal(probe, rows):
            continue  # identical futures prove nothing
        change = (forward(probe).float()[:, :t] - base[:, :t]).abs().max().item()
        if change > CAUSAL_TOLERANCE * scale:
            return (f"the model sees the future: its logits before position {t} changed by {change:.3g} when only "
                    f"tokens from position {t} on changed (a non-causal attention mask or a look-ahead)")
    others = rows.clone()
    others[1:] = shifted[1:].roll(1, dims=1)
    change = (forward(others).float()[0] - base[0]).abs().max().item()
    if change > CAUSAL_TOLERANCE * scale:
        return f"the model reads across the batch: row 0's logits changed by {change:.3g} when only other rows changed"
    return None


def score_hand_over(path: str) -> dict:
    """The harness's score of a handed-over model (run by evo/launch/evaluate.py in a fresh process):
    load the program, check it is a causal language model on validation text, then score it once
    on EVAL_TOKENS at EVAL_BATCH_SIZE with score_logits. Raises Refused."""
    t0 = time.monotonic()
    device = get_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        module = torch.export.load(path).module()
    except Exception as e:  # whatever fails to load is the candidate's artefact
        raise Refused("invalid", f"the handed-over model could not be loaded ({type(e).__name__}: {str(e)[:200]})")
    tokenizer = Tokenizer.from_directory()
    vocab = tokenizer.get_vocab_size()
    token_bytes = get_token_bytes(device)

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        try:
            return module(x)
        except Exception as e:
            raise Refused("invalid", f"the handed-over model failed on a {tuple(x.shape)} batch of validation tokens "
                                     f"({type(e).__name__}: {str(e)[:200]})")

    first = next(make_dataloader(tokenizer, EVAL_BATCH_SIZE, MAX_SEQ_LEN, "val", device=device, single_pass=True))
    rows = first[0].clone()  # the loader refills its buffers in place
    steps = max(1, EVAL_TOKENS // (EVAL_BATCH_SIZE * MAX_SEQ_LEN))
    try:
        score_logits(forward, [first], token_bytes, 1, vocab)  # shape and finiteness before comparing logits
        violation = causality_violation(forward, rows) if EVAL_BATCH_SIZE >= 2 else None
        if violation:
            raise Refused("invalid", violation)
        checked = time.monotonic()
        loader = make_dataloader(tokenizer, EVAL_BATCH_SIZE, MAX_SEQ_LEN, "val", device=device, single_pass=True)
        nats, nbytes, tokens, _ = score_logits(forward, loader, token_bytes, steps, vocab)
    except ValueError as e:
        raise Refused("nan" if "non-finite" in str(e) else "invalid", f"the handed-over model fails: {e}")
    return {"val_bpb": bits_per_byte(nats, nbytes), "nats": nats, "bytes": nbytes, "tokens": tokens,
            "check_seconds": round(checked - t0, 3), "seconds": round(time.monotonic() - t0, 3)}


_handed_over = False


def _hand_over(model: torch.nn.Module, path: str) -> float:
    """Save the model as a torch.export program of `idx -> logits` at the harness's shapes (a graph
    of ATen ops and weights: the harness runs none of the candidate's Python) and return NaN: the
    score is the harness's to compute. In float32 throughout (parameters too): a program exported
    under autocast does not load back, and mixed dtypes without autocast do not multiply."""
    global _handed_over
    if _handed_over:
        raise RuntimeError("evaluate_bpb hands the model to the harness once per run; call it once, at the end")
    _handed_over = True
    t0 = time.monotonic()
    module = getattr(model, "_orig_mod", model).float()  # torch.compile's wrapper holds the module itself
    device = next(module.parameters()).device
    idx = torch.zeros((EVAL_BATCH_SIZE, MAX_SEQ_LEN), dtype=torch.long, device=device)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        program = torch.export.export(module, (idx,))
    torch.export.save(program, path)
    print(f"evaluate_bpb: handed the model to the harness in {time.monotonic() - t0:.1f} s; it scores the model "
          f"in its own process", flush=True)
    return float("nan")


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, tokenizer: Tokenizer, batch_size: int) -> float:
    """Bits per byte on EVAL_TOKENS of the pinned validation split, at MAX_SEQ_LEN.

    Under the harness the model is handed over and scored in the harness's own process (this
    returns NaN; the harness's number is the one archived). By hand it is scored here, the same
    way. Sums per-token cross-entropy (nats) of the logits `model(idx)` returns and the raw byte
    length of each target token; special tokens (0 bytes) count in neither. Independent of
    vocabulary size, so tokenizers compare. The split is read once: a split smaller than
    EVAL_TOKENS is scored whole, each token once, and the evaluator says so.
    """
    if os.environ.get(HAND_OVER_ENV):
        return _hand_over(model, os.environ[HAND_OVER_ENV])
    t0 = time.monotonic()
    device = next(model.parameters()).device
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val", device=device, single_pass=True)
    steps = max(1, EVAL_TOKENS // (batch_size * MAX_SEQ_LEN))
    nats, nbytes, ntokens, done = score_logits(lambda x: model(x).float(), loader, get_token_bytes(device), steps,
                                               tokenizer.get_vocab_size())
    if done < steps:
        print(f"evaluate_bpb: the validation split holds {ntokens:,} scored tokens, fewer than "
              f"EVAL_TOKENS = {EVAL_TOKENS:,}; each was scored once.", flush=True)
    print(f"evaluate_bpb: scored {ntokens:,} tokens in {time.monotonic() - t0:.1f} s", flush=True)
    return bits_per_byte(nats, nbytes)


# ---------------------------------------------------------------------------
# Main: prepare a preset's data and tokenizer
# ---------------------------------------------------------------------------

def prepare(preset_source: str, text_paths: list[Path], num_shards: int, workers: int, force: bool) -> None:
    source = "text:" + ",".join(str(p.resolve()) for p in text_paths) if text_paths else preset_source
    # Corpora we write are cut into documents of at most one row; climbmix is read as upstream has it.
    doc_tokens = None if source == "climbmix" else MAX_SEQ_LEN
    if MANIFEST.exists() and not force:
        manifest = json.loads(MANIFEST.read_text())
        if manifest.get("source") == source and manifest.get("doc_tokens") == doc_tokens:
            print(f"Preset {PRESET!r} already prepared in {CACHE_DIR} ({source}); --force redoes it.")
            return
        if manifest.get("source") == source:
            print(f"Preset {PRESET!r} was prepared from {source} in documents longer than a row; preparing it again.")
        else:
            print(f"Preset {PRESET!r} was prepared from {manifest.get('source')}; replacing it with {source}.")
    if force or MANIFEST.exists():
        MANIFEST.unlink(missing_ok=True)
        shutil.rmtree(TOKENIZER_DIR, ignore_errors=True)
        if source != "climbmix":  # downloaded shards are kept; written shards are redone
            shutil.rmtree(DATA_DIR, ignore_errors=True)

    print(f"Preparing preset {PRESET!r} in {CACHE_DIR}", flush=True)
    if source == "climbmix":
        train_files, val_file = download_climbmix(num_shards, workers)
    else:
        if text_paths:
            docs = [doc for p in text_paths for doc in read_documents(p)]
        elif source == "tinystories":
            raw = CACHE_DIR / "downloads" / "TinyStoriesV2-GPT4-valid.txt"
            download_file(TINYSTORIES_URL, raw)
            docs = read_documents(raw)
        else:
            docs = generated_corpus()
        train_docs, val_docs = split_documents(docs)
        train_files, val_file = [DATA_DIR / _shard_name(0)], DATA_DIR / "val.parquet"
        write_shard(train_docs, train_files[0])
        write_shard(val_docs, val_file)
        print(f"Data: {len(train_docs)} train / {len(val_docs)} val documents "
              f"({sum(map(len, train_docs)):,} / {sum(map(len, val_docs)):,} characters)", flush=True)

    train_tokenizer(train_files)
    if doc_tokens is not None:
        # The tokenizer learns from whole documents; the shards then hold them cut to fit a row.
        tokenizer = Tokenizer.from_directory()
        def count(texts: list[str]) -> list[int]:
            return [len(ids) for ids in tokenizer.encode(texts)]
        rng = random.Random(0)  # the cut is part of the data: the same corpus is always cut the same way
        train_docs = fit_documents(train_docs, count, doc_tokens, rng)
        val_docs = fit_documents(val_docs, count, doc_tokens, rng)
        write_shard(train_docs, train_files[0])
        write_shard(val_docs, val_file)
        val_tokens = sum(count(val_docs))
        note = (f"; fewer than EVAL_TOKENS = {EVAL_TOKENS:,}, so evaluate_bpb scores them all, once"
                if val_tokens < EVAL_TOKENS else "")
        print(f"Data: cut to at most {doc_tokens} tokens, {len(train_docs)} train / {len(val_docs)} val documents; "
              f"{sum(count(train_docs)):,} / {val_tokens:,} tokens{note}", flush=True)
    MANIFEST.write_text(json.dumps({"preset": PRESET, "source": source, "train": [p.name for p in train_files],
                                    "val": val_file.name, "doc_tokens": doc_tokens,
                                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    print(f"Done: preset {PRESET!r} ready (EVO_PRESET={PRESET}).", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for an evo preset.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: EVO_PRESET or 'gpu'")
    parser.add_argument("--text", nargs="+", type=Path, default=[], metavar="PATH",
                        help="prepare from local text, JSONL ('text' field) or parquet ('text' column) files")
    parser.add_argument("--num-shards", type=int, default=10, help="gpu: training shards to download (-1 = all)")
    parser.add_argument("--download-workers", type=int, default=8)
    parser.add_argument("--force", action="store_true", help="prepare again even if the preset is ready")
    args = parser.parse_args(argv)
    if args.preset and args.preset != PRESET:
        # The preset fixes module-level constants, so switch by re-running under its environment.
        env = dict(os.environ, EVO_PRESET=args.preset)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    num_shards = CLIMBMIX_MAX_SHARD if args.num_shards == -1 else args.num_shards
    if num_shards < 1:
        parser.error("--num-shards must be at least 1 (or -1 for all).")
    try:
        prepare(_P["source"], args.text, num_shards, args.download_workers, args.force)
    except PrepareError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
