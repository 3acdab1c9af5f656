"""The whole CodeGen model (GPT-J style) in one file.

    h = wte[input_ids]                      # no absolute position embedding
    for each block:
        a = ln_1(h)                         # one LayerNorm feeds both branches
        h = h + attn(a) + mlp(a)            # parallel residual
    logits = lm_head(ln_f(h))               # biased, not tied to wte

Attention uses interleaved ("rotate every two") rotary embeddings on the first `rotary_dim`
dimensions of each head of q and k. Internally q, k, v are fused in plain [q; k; v] order
(`attn.qkv`); the released checkpoints' mp_num=4 Q,V,K layout is converted in checkpoint/hf.py.

Top to bottom, as in the diagram: rotary embedding, attention, MLP, block, the model (sized by
config.py's `CodeGenConfig`), then the KV cache (keys and values kept between decode steps).
Where CPU inference leaves PyTorch's default ops for a native kernel is decided in
kernels/cpu_decode.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from opencodegen.config import CodeGenConfig
from opencodegen.kernels import cpu_decode


# ---- rotary position embedding -------------------------------------------------------------------
def rotary_table(n_positions: int, rotary_dim: int, head_dim: int) -> torch.Tensor:
    """Per position, multipliers (cos, signed sin) over a whole head: [n_positions, 2, head_dim], fp32.

    Pair i of the first rotary_dim dims, (x[2i], x[2i+1]), turns by position * inv_freq[i]:
    x' = x * cos + swap_pairs(x) * sin with sin = (-sin_i, +sin_i) on the pair; the dims past
    rotary_dim get cos 1 and sin 0, i.e. stay as they are. Always computed on the CPU (also
    inside a meta-device context, where it would be empty).
    """
    steps = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / (10000 ** (steps / rotary_dim))
    angles = torch.arange(n_positions, dtype=torch.int64, device="cpu").float()[:, None] * inv_freq
    table = torch.zeros(n_positions, 2, head_dim, device="cpu")
    table[:, 0] = 1.0
    table[:, 0, :rotary_dim] = angles.cos().repeat_interleave(2, dim=-1)
    table[:, 1, 0:rotary_dim:2] = -angles.sin()
    table[:, 1, 1:rotary_dim:2] = angles.sin()
    return table


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., head_dim] ("rotate every two"), computed in fp32 like the
    original and returned in x's dtype; `cos`, `sin` [..., head_dim] broadcast against x."""
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2i+1], x[2i]) pairs
    return (x32 * cos + swapped * sin).to(x.dtype)


# ---- attention -----------------------------------------------------------------------------------
class Linear(nn.Linear):
    """nn.Linear (same parameters) whose CPU inference on a few rows takes kernels/cpu_decode.py's
    faster path: decoding multiplies every weight by a few rows, which PyTorch reads slowly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = cpu_decode.linear(x, self.weight, self.bias)
        return super().forward(x) if out is None else out


def heads(qkv: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """q, k (rotary applied) and v [B, H, T, D] from the fused projection's output [B, T, 3, H, D]."""
    q, k = apply_rotary(qkv[:, :, :2], *rotary).permute(2, 0, 3, 1, 4)  # q and k in one go
    return q, k, qkv[:, :, 2].transpose(1, 2)


def single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention of one new token per row (q [B, H, 1, D]) over the cache: two small matmuls.

    The decode step's path: for a single query SDPA's CPU flash kernel gains nothing and slows
    down when its threads compete for cores. `mask` is boolean, True = may attend.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), v)


class Attention(nn.Module):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=False)  # plain [q; k; v] rows
        self.out_proj = Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.attn_pdrop

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        # Scores and softmax in fp32, as the original; output cast back to the model dtype.
        if cache is not None and T == 1 and not self.training:
            return self.out_proj(self.decode_step(qkv, rotary, mask, cache, layer))
        q, k, v = heads(qkv, rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = F.scaled_dot_product_attention(
            q.float(),
            k.float(),
            v.float(),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,
        ).to(x.dtype)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))

    def decode_step(
        self, qkv: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None, cache: KVCache,
        layer: int,
    ) -> torch.Tensor:
        """Attention output [B, 1, H * D] of one new token per row from its qkv [B, 1, 3, H, D] (before
        the rotary embedding): the native kernel where kernels/cpu_decode.py takes it, else PyTorch."""
        out = cpu_decode.attention(qkv, rotary, cache, layer, mask)
        if out is None:
            q, k, v = heads(qkv, rotary)
            out = cache.attend(layer, q, k, v, mask).to(qkv.dtype).transpose(1, 2).reshape(qkv.shape[0], 1, -1)
        return out


# ---- MLP -----------------------------------------------------------------------------------------
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.fc_in = Linear(config.n_embd, config.inner_dim)
        self.fc_out = Linear(config.inner_dim, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(gelu_tanh(self.fc_in(x)))


# ---- block and model -----------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.mlp = MLP(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, h, rotary, mask, cache, layer):
        a = self.ln_1(h)
        out = self.attn(a, rotary, mask, cache, layer) + self.mlp(a)
        return h + (self.resid_dropout(out) if self.training else out)


class Transformer(nn.Module):
    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    past_key_values: KVCache | None = None


class CodeGenForCausalLM(nn.Module):
    """CodeGen language model: `model(input_ids, attention_mask).logits` is [B, T, vocab_size]."""

    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=True)
        self.register_buffer(
            "rotary", rotary_table(config.n_positions, config.rotary_dim, config.head_dim), persistent=False
        )
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """GPT-2 style init; residual output projections scaled by 1/sqrt(2 n_layer)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if p.device.type == "meta":
                continue
            with torch.no_grad():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln_" in name or name.startswith("transformer.ln_f"):
                    p.fill_(1.0)
                else:
                    scale = std / math.sqrt(2 * self.config.n_layer) if name.endswith(
                        ("out_proj.weight", "fc_out.weight")
                    ) else std
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale)

    # The embedding is never quantized, so it tells the model's floating dtype and device.
    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(self.config, batch_size, max_len, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        num_logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """Run the model on `input_ids` [B, T].

        attention_mask [B, past + T] (1 = real token) marks left padding; positions then come
        from its cumulative sum so padding never shifts real tokens. With `use_cache`, a cache
        of capacity T is created when none is given. `num_logits_to_keep` > 0 computes logits
        only for the last positions (prefill needs just one).
        """
        B, T = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.new_cache(B, T)
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens exceeds n_positions={self.config.n_positions}")
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask must be [batch, past + new] = {[B, past + T]}, got {list(attention_mask.shape)}")

        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        cos, sin = self.rotary[position_ids][:, :, :, None, None].unbind(2)  # [B, T, 1, 1, head_dim] each
        mask = self._attention_mask(attention_mask, B, T, past, input_ids.device)

        h = self.transformer.drop(self.transformer.wte(input_ids))
        for i, block in enumerate(self.transformer.h):
            if self.gradient_checkpointing and self.training:
                h = checkpoint(block, h, (cos, sin), mask, cache, i, use_reentrant=False)
            else:
                h = block(h, (cos, sin), mask, cache, i)
        if cache is not None:
            cache.length = past + T
        if num_logits_to_keep:
            h = h[:, -num_logits_to_keep:]
        logits = self.lm_head(self.transformer.ln_f(h))
        return CausalLMOutput(logits=logits, past_key_values=cache)

    @staticmethod
    def _attention_mask(
        attention_mask: torch.Tensor | None, B: int, T: int, past: int, device: torch.device
    ) -> torch.Tensor | None:
        """Boolean [B, 1, T, past + T] mask (True = may attend), or None for plain causal."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (past == 0 or T == 1):
            return None  # SDPA's is_causal (T > 1, no past) or nothing to mask (single new token)
        S = past + T
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=past)
        mask = causal.expand(B, 1, T, S)
        if padded:
            mask = mask & attention_mask.bool()[:, None, None, :]
            # A padding query would see no key at all (NaN in SDPA); let it see itself.
            own = torch.zeros(T, S, dtype=torch.bool, device=device)
            own[:, past:] = torch.eye(T, dtype=torch.bool, device=device)
            mask = mask | own
        return mask

    # ---- persistence: the HF layout lives in checkpoint/hf.py ---------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None, **kwargs) -> None:
        from opencodegen.checkpoint import save_model

        save_model(self, directory, dtype=dtype, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype | None = None) -> CodeGenForCausalLM:
        from opencodegen.checkpoint import load_model

        return load_model(path, device=device, dtype=dtype)[1]


# ---- the KV cache: what attention keeps between decode steps -------------------------------------
class KVCache:
    """Preallocated keys/values of every layer: [batch, n_head, max_len, head_dim] each.

    All rows share one `length` (prompts are left-padded); padding is excluded through the
    attention mask, which always covers the whole cached sequence plus the new tokens.
    The first `offset` tokens may live elsewhere (a subclass holding a shared prompt prefix, which
    overrides `attend`); `keys`/`values` then store positions offset … length.
    """

    def __init__(self, config: CodeGenConfig, batch_size: int, max_len: int, dtype: torch.dtype, device):
        shape = (batch_size, config.n_head, max_len, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.length = 0
        self.offset = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, H, T, D] after the cached tokens; return all keys and values stored here."""
        start = self.length - self.offset
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """A decode step's attention in PyTorch: store k, v [B, H, 1, D], then attend q over every cached
        token (fp32)."""
        k, v = self.update(layer, k, v)
        return single_query_attention(q.float(), k.float(), v.float(), mask)

    def compact(self, rows: list[int]) -> KVCache:
        """Keep only `rows` (ascending) in place: each moves up to its new index, copying only the
        cached positions; rows before the first dropped one are not touched at all."""
        moves = [(dst, src) for dst, src in enumerate(rows) if dst != src]
        stored = self.length - self.offset
        for tensors in (self.keys, self.values):
            for i, t in enumerate(tensors):
                for dst, src in moves:
                    t[dst, :, :stored].copy_(t[src, :, :stored])
                tensors[i] = t[: len(rows)]
        return self
