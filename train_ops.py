"""Cheaper CPU training ops for the encoder: a dropout whose mask costs less to draw, and the
attention that dropout goes in.

On the CPU a training step of MiniLM spends about 15% in dropout (bench/bench_attention.py):
`torch.nn.functional.dropout` draws its mask with `bernoulli_`, one generator call per element. Here
the mask comes from 64-bit random words cut into 16-bit lanes (four lanes a call), each lane kept
when it is at or above p * 2^16; the drop rate is p to within 2^-17. With dropout on, PyTorch's CPU
`scaled_dot_product_attention` also leaves its fused kernels for the math one, which for bf16
inputs computes in fp32 at about half the speed of the same ops written out. `attention` writes
them out in fp32 (the math kernel's precision) and drops the probabilities with `dropout`.

`use_fast_dropout(model)` puts both into every HF encoder inside `model`: each nn.Dropout becomes a
`FastDropout` (a subclass, so `set_dropout` and HF's `self.dropout.p` still work) and the
encoders' attention implementation becomes "ttsn_train", registered with transformers'
AttentionInterface. Eval-mode forwards (validation, encoding) and dropout 0 go to transformers'
own SDPA path unchanged, so only training steps change, and only their random stream: the
expected value of every activation is the same. Checkpoints do not see it: a model's encoder config
is recorded when the model is built, and a checkpoint loads with the default attention.

Also here, the two other settings the trainer applies to the model's training on any device:
`set_dropout(model, p)` (--dropout), `freeze_lower_layers(model, k)` (--freeze-layers: the embeddings
and the lowest k layers stay fixed, so backward stops above them) and `make_optimizer` (AdamW with the
fused kernel on CPU and CUDA: 5x faster a step on the CPU than the multi-tensor default,
bench/bench_optimizer.py).

Example (CPU, seconds):
    from two_tower_model import TwoTowerModel
    from train_ops import use_fast_dropout
    model = TwoTowerModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    use_fast_dropout(model)   # -> number of dropout layers replaced
"""
from __future__ import annotations

import torch

from utils import UserError

ATTENTION = "ttsn_train"
_LANES = 4  # 16-bit lanes in one 64-bit random word


def keep_mask(shape: torch.Size | tuple, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - p (independently), drawn
    from the default generator of `device`."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64, device=device)
    words.random_(-(2 ** 63), 2 ** 63 - 1)  # the full 64-bit range
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform on [-2^15, 2^15)
    return lanes >= round(p * 65536) - 32768


class _Dropout(torch.autograd.Function):
    """y = x * m, m = keep / (1 - p) in x's dtype; the backward multiplies by the same m."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        m = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (m,) = ctx.saved_tensors
        return grad * m, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Same contract as torch.nn.functional.dropout (not in place)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return _Dropout.apply(x, p)


_drop = dropout  # `attention` below takes a float argument named dropout, as AttentionInterface passes it


class FastDropout(torch.nn.Dropout):
    """nn.Dropout with the mask of `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """An AttentionInterface function: transformers' SDPA when no dropout is asked for; otherwise
    softmax(q k^T * scaling + mask) in fp32, dropped with `dropout`, times v.
    q, k, v: (batch, heads, tokens, head_dim); mask: bool (batch, 1, tokens, tokens), True = attend,
    or additive float, or None. Returns ((batch, tokens, heads, head_dim), None) as SDPA's does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if dropout == 0.0 or not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                      scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    with torch.autocast(query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)).mul_(scaling)  # (b, h, q, k)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask.float()
        probs = _drop(scores.softmax(-1), dropout)
        out = torch.matmul(probs, value.float()).to(query.dtype)  # (b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Replace every nn.Dropout inside `model` with a FastDropout of the same p, and route the
    attention of every transformers encoder in it through `attention`. Returns how many dropout
    layers it replaced."""
    from transformers import PreTrainedModel
    _register()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, FastDropout(child.p, inplace=child.inplace))
                swapped += 1
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.config._attn_implementation in ("sdpa", "eager"):
            m.set_attn_implementation(ATTENTION)
    return swapped


def set_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the probability of every nn.Dropout in `model` to p (HF's BERT attention reads its
    dropout module's p too); returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in layers:
        m.p = p
    return len(layers)


def freeze_lower_layers(model: torch.nn.Module, k: int) -> int:
    """Keep the embeddings and the lowest k transformer layers of every HF encoder inside `model` at
    their weights (requires_grad False); returns how many parameters that fixes. Autograd then
    stops at layer k: the frozen layers run forward only, and the optimizer never sees them. k = 0
    changes nothing. A k at or above an encoder's layer count is refused: nothing would train."""
    from transformers import PreTrainedModel
    if k <= 0:
        return 0
    frozen = 0
    for enc in [m for m in model.modules() if isinstance(m, PreTrainedModel)]:
        n_layers = int(getattr(enc.config, "num_hidden_layers", 0))
        layers = next((m for m in enc.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers), None)
        if layers is None or n_layers == 0:
            raise UserError(f"--freeze-layers {k}: cannot find the transformer layers of {type(enc).__name__}; "
                            f"use --freeze-layers 0")
        if k >= n_layers:
            raise UserError(f"--freeze-layers {k}: the encoder has {n_layers} layers, so nothing would train; "
                            f"give at most {n_layers - 1}")
        for part in [enc.get_input_embeddings(), getattr(enc, "embeddings", None), *layers[:k]]:
            for p in (part.parameters() if part is not None else ()):
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen += p.numel()
    return frozen


def make_optimizer(params: list, lr: float, weight_decay: float, device) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one pass over all parameters per step) on CPU and CUDA, where
    PyTorch has it; the plain multi-tensor AdamW elsewhere. Same update rule either way."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
