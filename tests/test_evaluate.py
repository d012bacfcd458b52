"""How the harness scores a handed-over model (prepare.py): causality check, scoring from logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F



VOCAB, T = 11, 16


def _onehot(x: torch.Tensor) -> torch.Tensor:
    return F.one_hot(x, VOCAB).float()


def causal(x: torch.Tensor) -> torch.Tensor:
    """Logits from the running mean of the tokens so far: causal."""
    h = _onehot(x).cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)
    return 3 * h


def sees_everything(x: torch.Tensor) -> torch.Tensor:
    """Bidirectional: every position sees the whole row (a missing causal mask)."""
    return 3 * _onehot(x).mean(1, keepdim=True).expand(-1, x.shape[1], -1) + causal(x)


def peeks_one_ahead(x: torch.Tensor) -> torch.Tensor:
    """A sliding window off by one: position i reads token i + 1, the token it is scored on."""
    ahead = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
    return causal(x) + 5 * _onehot(ahead)


def mixes_rows(x: torch.Tensor) -> torch.Tensor:
    """Batch-statistics leak: each position sees the same position of every row."""
    return causal(x) + _onehot(x).mean(0, keepdim=True)


def _rows(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def test_a_causal_model_passes(smoke) -> None:
    assert smoke.causality_violation(causal, _rows()) is None


@pytest.mark.parametrize("model", [sees_everything, peeks_one_ahead])
def test_a_model_that_sees_the_future_is_caught(smoke, model) -> None:
    sentence = smoke.causality_violation(model, _rows())
    assert sentence is not None and "sees the future" in sentence


def test_a_model_that_reads_other_rows_is_caught(smoke) -> None:
    sentence = smoke.causality_violation(mixes_rows, _rows())
    assert sentence is not None and "across the batch" in sentence


def test_float_noise_is_tolerated(smoke) -> None:
    noisy = lambda x: causal(x) + 1e-6 * torch.randn(x.shape[0], x.shape[1], VOCAB)
    assert smoke.causality_violation(noisy, _rows()) is None


def _batches(rows: torch.Tensor):
    yield rows[:, :-1], rows[:, 1:]


def test_score_is_cross_entropy_in_bits_per_byte_and_skips_special_tokens(smoke) -> None:
    rows = torch.randint(1, VOCAB, (2, T + 1), generator=torch.Generator().manual_seed(1))
    rows[0, 5] = 0                                   # token 0 is special: 0 bytes
    token_bytes = torch.tensor([0] + [2] * (VOCAB - 1))
    uniform = lambda x: torch.zeros(x.shape[0], x.shape[1], VOCAB)
    nats, nbytes, tokens, done = smoke.score_logits(uniform, _batches(rows), token_bytes, steps=1, vocab_size=VOCAB)
    scored = int((rows[:, 1:] != 0).sum())
    assert (tokens, nbytes, done) == (scored, 2 * scored, 1)
    assert smoke.bits_per_byte(nats, nbytes) == pytest.approx(math.log(VOCAB) / (2 * math.log(2)))


def test_logits_of_the_wrong_shape_or_not_finite_are_refused(smoke) -> None:
    rows = torch.randint(1, VOCAB, (2, T + 1), generator=torch.Generator().manual_seed(2))
    token_bytes = torch.ones(VOCAB, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        smoke.score_logits(lambda x: torch.zeros(2, T, VOCAB - 1), _batches(rows), token_bytes, 1, VOCAB)
    bad = torch.zeros(2, T, VOCAB)
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        smoke.score_logits(lambda x: bad, _batches(rows), token_bytes, 1, VOCAB)
