"""
The seed of an evo population: a small GPT trained for a fixed wall-clock budget on one device.

Read it top to bottom:
  1. hyperparameters, the constants a search edits (evo writes the preset's model size in)
  2. runtime: device, precision, seed, attention backend, the device's peak FLOP/s
  3. the model: GPT with RoPE, QK-norm, ReLU^2 MLP, gated value embeddings, per-layer residual
     and x0 scalars, sliding-window attention and a logit soft-cap
  4. the optimizer: Muon (polar-express orthogonalisation) for the 2-D matrices of the blocks,
     AdamW for embeddings, lm_head and scalars
  5. setup, schedules (functions of progress = training seconds / TIME_BUDGET), training loop
  6. evaluation with the locked evaluator from prepare.py and the summary block

Run as `python train.py` next to prepare.py. EVO_PRESET picks data, sequence length and time
budget; EVO_SEED (default 42) seeds the initialisation so replicates differ.
"""

import os

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import contextlib
import gc
import math
import re
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, PRESET, TIME_BUDGET, Tokenizer, evaluate_bpb, get_device, make_dataloader

sys.stdout.reconfigure(line_buffering=True)  # every line reaches the harness as it is printed
t_start = time.time()

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; no command-line flags)
# ---------------------------------------------------------------------------

# Model and batch size are autoresearch's (the gpu preset). When a run starts on another preset,
# evo writes that preset's numbers (PRESETS in prepare.py) into these six assignments.

# Model architecture
DEPTH = 8                     # number of transformer blocks
ASPECT_RATIO = 64             # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128                # dimension of one attention head
WINDOW_PATTERN = "SSSL"       # cycled over layers: S = half-context window, L = full; last layer always L
LOGIT_SOFTCAP = 15.0          # logits = cap * tanh(logits / cap)

# Batch
TOTAL_BATCH_SIZE = 2**19      # tokens per optimizer step (reached by gradient accumulation)
DEVICE_BATCH_SIZE = 128       # rows per forward/backward pass (lower it if out of memory)

# Optimization
EMBEDDING_LR = 0.6          # AdamW, token and value embeddings (times (model_dim / 768) ** -0.5)
UNEMBEDDING_LR = 0.004      # AdamW, lm_head (times (model_dim / 768) ** -0.5)
MATRIX_LR = 0.04            # Muon, the 2-D matrices of the transformer blocks
SCALAR_LR = 0.5             # AdamW, per-layer x0 lambdas (residual lambdas get 1% of it)
WEIGHT_DECAY = 0.2          # Muon's cautious weight decay, decays linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)    # AdamW beta1, beta2
MUON_MOMENTUM = 0.95        # Muon's Nesterov momentum once warmed up
MUON_MOMENTUM_START = 0.85  # ... and at the start
MUON_MOMENTUM_WARMUP = 0.3  # fraction of the budget over which momentum ramps from start to final
MUON_BETA2 = 0.95           # decay of Muon's per-row/column second moment (NorMuon)
NS_STEPS = 5                # polar-express iterations per Muon step
WARMUP_RATIO = 0.0          # fraction of the budget spent warming the learning rate up
WARMDOWN_RATIO = 0.5        # fraction of the budget spent decaying it at the end
FINAL_LR_FRAC = 0.0         # learning rate at the end, as a fraction of the initial one

# ---------------------------------------------------------------------------
# Runtime: device, precision, seed, attention backend, peak FLOP/s
# ---------------------------------------------------------------------------

EXIT_DIVERGED = 3  # exit status the harness reads as "loss went nan/inf or exploded"

seed = int(os.environ.get("EVO_SEED", "42"))
torch.manual_seed(seed)  # seeds the CPU, CUDA and MPS generators

device = get_device()
on_cuda = device.type == "cuda"
if on_cuda:
    torch.set_float32_matmul_precision("high")
# CUDA trains in bf16 autocast with compiled kernels; CPU and MPS run plain fp32, eagerly.
# EVO_COMPILE=1 (or 0) compiles the model and optimizer steps on any device (or on none): the
# compiled path can then be checked without a GPU.
compiled = os.environ.get("EVO_COMPILE", "1" if on_cuda else "0") == "1"
autocast_ctx = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
maybe_compile = (lambda fn: torch.compile(fn, dynamic=False, fullgraph=True)) if compiled else (lambda fn: fn)
embed_dtype = torch.bfloat16 if on_cuda else torch.float32  # embeddings and rotary tables
ortho_dtype = torch.bfloat16 if on_cuda else torch.float32  # Muon's orthogonalisation


def synchronize():
    if on_cuda:
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


# Attention backend. Full-causal layers use SDPA; sliding-window layers use FlexAttention with a
# block mask on CUDA (its backward exists only there) and SDPA with a boolean mask elsewhere.
# FlashAttention-3 handles both on Hopper when its package (flash_attn_interface) is installed
# locally; nothing is ever downloaded, and the log says which path runs and why. While the model
# is exported for the harness (torch.compiler.is_exporting()), every layer takes SDPA with boolean
# masks: the same attention, in operators any PyTorch can load back.
fa3 = None
attention_note = ""
if on_cuda and torch.cuda.get_device_capability() == (9, 0):
    try:
        import flash_attn_interface as fa3
    except ModuleNotFoundError:
        attention_note = " (flash_attn_interface is not installed)"
    except Exception as e:  # a broken build: say why and use PyTorch's attention
        attention_note = f" (flash_attn_interface failed to import: {type(e).__name__}: {e})"
    if fa3 is not None:
        try:
            probe = torch.zeros(1, 256, 1, HEAD_DIM, device=device, dtype=torch.bfloat16)  # leaves the RNG alone
            fa3.flash_attn_func(probe, probe, probe, causal=True, window_size=(128, 0))
        except Exception as e:  # an installed build that does not run here: say why and use PyTorch's
            attention_note = f" (flash_attn_interface is installed but failed here: {type(e).__name__}: {e})"
            fa3 = None
elif on_cuda:
    attention_note = " (FlashAttention-3 needs a Hopper GPU)"

flex_attention = create_block_mask = None
if on_cuda and fa3 is None:
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as _flex_attention

    flex_attention = torch.compile(_flex_attention, dynamic=False)

if fa3 is not None:
    attention_backend = "flash-attention-3 (flash_attn_interface, installed locally)"
elif flex_attention is not None:
    attention_backend = "sdpa (full layers) + flex_attention (windowed layers)" + attention_note
else:
    attention_backend = "sdpa (boolean masks for windowed layers)" + attention_note

# Dense bf16 tensor-core peak FLOP/s, by a whole word of torch.cuda.get_device_name(); first match
# wins. MFU is reported as 0 where the device is not listed (CPU, MPS, unknown GPUs).
PEAK_BF16_FLOPS = [
    ("GB200", 2500e12), ("B200", 2250e12), ("B100", 1750e12),
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("H200", 989e12), ("H20", 148e12),
    ("A100", 312e12), ("A800", 312e12), ("A10G", 70e12), ("A10", 125e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("RTX 5090", 209e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
]


def peak_flops():
    if not on_cuda:
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if re.search(rf"\b{re.escape(key)}\b", name):
            return flops
    return 0.0


device_peak_flops = peak_flops()

# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    window_pattern: str
    softcap: float


def norm(x):
    """RMSNorm without learned parameters."""
    return F.rms_norm(x, (x.size(-1),))


def has_value_embed(layer_idx, n_layer):
    """Value embeddings on every other layer, counted back from the last, which always has one."""
    return (n_layer - 1 - layer_idx) % 2 == 0


def rotate(x, cos, sin):
    """RoPE on (B, T, H, D): rotate each pair (x[d], x[d + D/2]) by a position-dependent angle."""
    half = x.size(-1) // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos + b * sin, b * cos - a * sin), dim=-1)


def sliding_window_mask(seq_len, window, dense=False):
    """The mask for a windowed layer: query i attends to keys i - window .. i. One predicate
    makes both the FlexAttention block mask and SDPA's boolean mask (True = may attend)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    if flex_attention is not None and not dense:
        return create_block_mask(mask_mod, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)
    pos = torch.arange(seq_len, device=device)
    return mask_mod(None, None, pos[:, None], pos[None, :])


def attend(q, k, v, window, mask):
    """Causal attention on (B, T, H, D) tensors; mask is None for a full-causal layer."""
    if fa3 is not None and not torch.compiler.is_exporting():
        y = fa3.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
        return y[0] if isinstance(y, tuple) else y  # some builds also return the softmax LSE
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.size(1) != k.size(1)
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif isinstance(mask, torch.Tensor):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    else:
        y = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0 and config.n_head % config.n_kv_head == 0
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)
        # Gate of the value embedding: reads the first few channels of the input, one gate per kv head
        self.ve_gate_channels = min(32, config.n_embd)
        self.ve_gate = (nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False)
                        if has_value_embed(layer_idx, config.n_layer) else None)

    def forward(self, x, ve, cos_sin, window, mask):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            # Value residual: add the token's value embedding, scaled per head by a gate in (0, 2)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q = norm(rotate(q, cos, sin)).type_as(v)  # QK-norm after RoPE
        k = norm(rotate(k, cos, sin)).type_as(v)
        y = attend(q, k, v, window, mask)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window, mask):
        x = x + self.attn(norm(x), ve, cos_sin, window, mask)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.window_sizes = self.layer_windows(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied from wte
        # Before block i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0, x0 the normed embedding
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_value_embed(i, config.n_layer)
        })
        self.rotary_len = 10 * config.sequence_len  # headroom beyond the training length
        cos, sin = self.rotary_tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._masks = {}  # (seq_len, window) -> attention mask, built outside any compiled graph

    @staticmethod
    def layer_windows(config):
        """Per layer, how many earlier tokens a query may see: S = half the context, L = all of it."""
        pattern = config.window_pattern.upper()
        assert pattern and set(pattern) <= set("SL"), f"WINDOW_PATTERN must use only S and L, got {pattern!r}"
        full, short = config.sequence_len, config.sequence_len // 2
        windows = [short if pattern[i % len(pattern)] == "S" else full for i in range(config.n_layer)]
        windows[-1] = full
        return windows

    def rotary_tables(self, base=10000.0, dtype=torch.float32):
        head_dim = self.config.n_embd // self.config.n_head
        dev = self.transformer.wte.weight.device
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=dev) / head_dim)
        angles = torch.outer(torch.arange(self.rotary_len, dtype=torch.float32, device=dev), inv_freq)
        # shaped (1, T, 1, D/2) to broadcast over batch and heads
        return angles.cos().to(dtype)[None, :, None, :], angles.sin().to(dtype)[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        n_embd = self.config.n_embd
        bound = 3**0.5 * n_embd**-0.5  # uniform(-bound, bound) has std 1/sqrt(n_embd)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate = 2 * sigmoid(0) = 1
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        self.cos, self.sin = self.rotary_tables(dtype=embed_dtype)
        self.transformer.wte.to(dtype=embed_dtype)
        for ve in self.value_embeds.values():
            ve.to(dtype=embed_dtype)

    def attention_masks(self, seq_len):
        """Per layer: None where attention is full-causal (or FA3 windows it itself), else a mask."""
        exporting = torch.compiler.is_exporting()
        masks = []
        for window in self.window_sizes:
            if (fa3 is not None and not exporting) or window >= seq_len - 1:
                masks.append(None)
            elif exporting:  # built in the exported graph, never cached
                masks.append(sliding_window_mask(seq_len, window, dense=True))
            else:
                if (seq_len, window) not in self._masks:
                    self._masks[(seq_len, window)] = sliding_window_mask(seq_len, window)
                masks.append(self._masks[(seq_len, window)])
        return masks

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        assert T <= self.rotary_len
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        masks = self.attention_masks(T)
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.window_sizes[i], masks[i])
        x = norm(x)
        logits = self.lm_head(x).float()
        cap = self.config.softcap
        logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        # reduction="none" gives one loss per token, flattened to (B * T,), as evaluate_bpb expects
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)

    def estimate_flops(self):
        """Training FLOPs per token (forward + backward): 6 per weight of every matmul, plus
        12 * heads * head_dim * attended context per layer (embedding lookups are free)."""
        matmul_weights = sum(p.numel() for p in self.transformer.h.parameters()) + self.lm_head.weight.numel()
        head_dim = self.config.n_embd // self.config.n_head
        attention = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len) for w in self.window_sizes)
        return 6 * matmul_weights + attention

    def param_counts(self):
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()),
            "lm_head": self.lm_head.weight.numel(),
            "transformer_matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": self.resid_lambdas.numel() + self.x0_lambdas.numel(),
        }
        counts["total"] = sum(counts.values())
        return counts


# ---------------------------------------------------------------------------
# The optimizer: Muon for block matrices, AdamW for everything else (single device)
# ---------------------------------------------------------------------------

# Polar Express (Amsel et al., 2025): per-iteration coefficients of X <- a X + b (X X^T) X + c (X X^T)^2 X,
# which drive every singular value of X towards 1 faster than the fixed Newton-Schulz quintic.
polar_express_coeffs = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


@maybe_compile
def adamw_update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


@maybe_compile
def muon_update(grads, params, momentum_buffer, second_moment, momentum, lr, wd, beta2, ns_steps, reduce_dim):
    """One Muon step for a stack of same-shaped matrices: grads and params are (N, rows, cols)."""
    # Nesterov momentum
    momentum_buffer.lerp_(grads, 1 - momentum)
    g = grads.lerp_(momentum_buffer, momentum)
    # Orthogonalise: scale so every singular value is below 1, then polar-express iterations.
    # Work on the wide orientation so X @ X^T is the smaller Gram matrix.
    X = g.to(ortho_dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    for a, b, c in polar_express_coeffs[:ns_steps]:
        gram = X @ X.mT
        X = a * X + (b * gram + c * (gram @ gram)) @ X
    if tall:
        X = X.mT
    # NorMuon: normalise each row (or column) by a running RMS, keeping the update's total norm
    sq_mean = X.float().square().mean(dim=reduce_dim, keepdim=True)
    n_reduced = X.size(reduce_dim)
    second_moment.lerp_(sq_mean.to(second_moment.dtype), 1 - beta2)
    scale = second_moment.clamp_min(1e-10).rsqrt()
    norm_before = (sq_mean.sum(dim=(-2, -1), keepdim=True) * n_reduced).sqrt()
    norm_after = (sq_mean * n_reduced * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    update = X.float() * (scale * norm_before / norm_after.clamp_min(1e-10))
    # Cautious weight decay: decay only the weights the update does not already push towards 0
    decay = (update * params >= 0).to(params.dtype)
    params.sub_(lr * update.to(params.dtype) + lr * wd * params * decay)


class MuonAdamW(torch.optim.Optimizer):
    """Each param group has kind "adamw" or "muon"; muon groups hold matrices of one shape."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})
        for group in self.param_groups:
            group["initial_lr"] = group["lr"]
        self._scalars = {}

    def _scalar(self, name, value):
        # Compiled updates take hyperparameters as 0-d CPU tensors (a new float would recompile);
        # eager updates take plain floats.
        if not compiled:
            return float(value)
        if name not in self._scalars:
            self._scalars[name] = torch.tensor(0.0, dtype=torch.float32)
        self._scalars[name].fill_(value)
        return self._scalars[name]

    def _step_adamw(self, group):
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            adamw_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                         self._scalar("step", state["step"]), self._scalar("lr", group["lr"]),
                         self._scalar("beta1", beta1), self._scalar("beta2", beta2),
                         self._scalar("eps", group["eps"]), self._scalar("wd", group["weight_decay"]))

    def _step_muon(self, group):
        params = group["params"]
        if not params or params[0].grad is None:
            return
        rows, cols = params[0].shape
        state = self.state[params[0]]
        reduce_dim = -1 if rows >= cols else -2
        if not state:
            state["momentum_buffer"] = torch.zeros(len(params), rows, cols, dtype=params[0].dtype, device=params[0].device)
            moment_shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["second_moment"] = torch.zeros(moment_shape, dtype=params[0].dtype, device=params[0].device)
        grads = torch.stack([p.grad for p in params])
        stacked = torch.stack(params)
        lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # tall matrices take larger steps
        muon_update(grads, stacked, state["momentum_buffer"], state["second_moment"],
                    self._scalar("momentum", group["momentum"]), self._scalar("muon_lr", lr),
                    self._scalar("muon_wd", group["weight_decay"]), self._scalar("muon_beta2", group["beta2"]),
                    group["ns_steps"], reduce_dim)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            else:
                self._step_muon(group)


def make_optimizer(model):
    lr_scale = (model.config.n_embd / 768) ** -0.5  # AdamW LRs were tuned at width 768
    matrices = list(model.transformer.h.parameters())
    groups = [
        dict(kind="adamw", params=[model.lm_head.weight], lr=UNEMBEDDING_LR * lr_scale, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=[model.transformer.wte.weight], lr=EMBEDDING_LR * lr_scale, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * lr_scale, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=[model.resid_lambdas], lr=SCALAR_LR * 0.01, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
        dict(kind="adamw", params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95), eps=1e-10, weight_decay=0.0),
    ]
    for shape in sorted({tuple(p.shape) for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if tuple(p.shape) == shape], lr=MATRIX_LR,
                           momentum=MUON_MOMENTUM, beta2=MUON_BETA2, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())), "a parameter has no optimizer group"
    print(f"AdamW LRs scaled by (model_dim / 768) ** -0.5 = {lr_scale:.4f}")
    return MuonAdamW(groups)


# ---------------------------------------------------------------------------
# Setup: tokenizer, model, optimizer, data
# ---------------------------------------------------------------------------

print(f"Preset: {PRESET} | device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if on_cuda else ''} | seed: {seed}")
print(f"Attention: {attention_backend}")
print(f"Compiled: {'model and optimizer steps (torch.compile)' if compiled else 'no (eager)'}")
print(f"Peak bf16 FLOP/s for MFU: {device_peak_flops:.3g}" + ("" if device_peak_flops else " (unknown device: MFU reported as 0)"))

tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()
print(f"Vocab size: {vocab_size:,}")

model_dim = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
n_head = model_dim // HEAD_DIM
config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=vocab_size, n_layer=DEPTH, n_head=n_head, n_kv_head=n_head,
                   n_embd=model_dim, window_pattern=WINDOW_PATTERN, softcap=LOGIT_SOFTCAP)
print(f"Model config: {asdict(config)}")

with torch.device("meta"):  # allocate nothing until the real device is known
    model = GPT(config)
model.to_empty(device=device)
model.init_weights()
model.attention_masks(MAX_SEQ_LEN)  # build the sliding-window masks before any compilation

counts = model.param_counts()
num_params = counts["total"]
print("Parameter counts:")
for key, value in counts.items():
    print(f"  {key:24s}: {value:,}")
flops_per_token = model.estimate_flops()
print(f"Estimated FLOPs per token: {flops_per_token:e}")

tokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
grad_accum_steps = max(1, round(TOTAL_BATCH_SIZE / tokens_per_fwdbwd))
tokens_per_step = grad_accum_steps * tokens_per_fwdbwd
if tokens_per_step != TOTAL_BATCH_SIZE:
    print(f"Note: TOTAL_BATCH_SIZE {TOTAL_BATCH_SIZE:,} rounded to {tokens_per_step:,} tokens "
          f"(a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN = {tokens_per_fwdbwd:,})")

optimizer = make_optimizer(model)
if compiled:
    model = torch.compile(model, dynamic=False)

train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
x, y, epoch = next(train_loader)  # the first batch, prefetched

print(f"Time budget: {TIME_BUDGET}s")
print(f"Tokens per step: {tokens_per_step:,} | gradient accumulation steps: {grad_accum_steps}")

# ---------------------------------------------------------------------------
# Schedules, all functions of progress = training seconds so far / TIME_BUDGET
# ---------------------------------------------------------------------------


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    remaining = (1.0 - progress) / WARMDOWN_RATIO  # 1 -> 0 across the warmdown
    return remaining + (1.0 - remaining) * FINAL_LR_FRAC


def muon_momentum(progress):
    ramp = min(progress / MUON_MOMENTUM_WARMUP, 1.0) if MUON_MOMENTUM_WARMUP > 0 else 1.0
    return MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)


def muon_weight_decay(progress):
    return WEIGHT_DECAY * (1.0 - progress)


# ---------------------------------------------------------------------------
# Training loop: runs until TIME_BUDGET seconds of training, not counting the first steps
# (when compiled, they include the compilation)
# ---------------------------------------------------------------------------

untimed_steps = 10 if compiled else 0  # steps 0..untimed_steps are not counted
t_start_training = time.time()
total_training_time = 0.0
timed_steps = 0
smooth_loss = 0.0
peak_mps_bytes = 0
last_print = 0.0
step = 0

while True:
    synchronize()
    t0 = time.time()
    for _ in range(grad_accum_steps):
        with autocast_ctx:
            loss = model(x, y)
        train_loss = loss.detach()
        (loss / grad_accum_steps).backward()
        x, y, epoch = next(train_loader)  # prepare the next batch while the device works

    progress = min(total_training_time / TIME_BUDGET, 1.0)
    lrm = lr_multiplier(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(progress)
            group["weight_decay"] = muon_weight_decay(progress)
    optimizer.step()
    model.zero_grad(set_to_none=True)

    # Fail fast: a nan/inf loss, or one far above where training started (worse than guessing)
    loss_value = train_loss.item()
    if step == 0:
        initial_loss = loss_value
    if not math.isfinite(loss_value):
        print(f"FAIL: loss diverged ({loss_value}) at step {step}")
        sys.exit(EXIT_DIVERGED)
    if loss_value > 1.5 * initial_loss:
        print(f"FAIL: loss diverged ({loss_value:.3f}, from {initial_loss:.3f} at step 0) at step {step}")
        sys.exit(EXIT_DIVERGED)

    synchronize()
    dt = time.time() - t0
    if step > untimed_steps:
        total_training_time += dt
        timed_steps += 1
    done = step > untimed_steps and total_training_time >= TIME_BUDGET

    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
    debiased_loss = smooth_loss / (1 - 0.9 ** (step + 1))
    if device.type == "mps":
        peak_mps_bytes = max(peak_mps_bytes, torch.mps.driver_allocated_memory())
    now = time.time()
    if step < 10 or now - last_print >= 1.0 or done:
        last_print = now
        pct = 100 * min(total_training_time / TIME_BUDGET, 1.0)
        mfu = 100 * flops_per_token * tokens_per_step / dt / device_peak_flops if device_peak_flops else 0.0
        remaining = max(0.0, TIME_BUDGET - total_training_time)
        print(f"step {step:05d} ({pct:.1f}%) | elapsed: {total_training_time:.1f}s | loss: {debiased_loss:.6f} | "
              f"lrm: {lrm:.2f} | dt: {dt * 1000:.0f}ms | tok/sec: {int(tokens_per_step / dt):,} | mfu: {mfu:.1f}% | "
              f"epoch: {epoch} | remaining: {remaining:.0f}s")

    # Python's garbage collector stalls for hundreds of ms; freeze what exists and collect rarely
    if step == 0:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif (step + 1) % 5000 == 0:
        gc.collect()

    step += 1
    if done:
        break

total_tokens = step * tokens_per_step

# ---------------------------------------------------------------------------
# Evaluation with the locked evaluator, then the summary the harness reads
# ---------------------------------------------------------------------------

# Under evo this hands the model to the harness, which scores it in its own process (val_bpb is
# then NaN here); run by hand, it scores the model in this process.
model.eval()
with autocast_ctx:
    val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)

t_end = time.time()
steady_mfu = (100 * flops_per_token * tokens_per_step * timed_steps / total_training_time / device_peak_flops
              if device_peak_flops and total_training_time > 0 else 0.0)
if on_cuda:
    peak_vram_mb = torch.cuda.max_memory_allocated() / 1024 / 1024
elif device.type == "mps":
    peak_vram_mb = peak_mps_bytes / 1024 / 1024
else:
    peak_vram_mb = 0.0

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
print(f"mfu_percent:      {steady_mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
