"""Cross-modal attention between driving queries and the keys/values of any number of sources.

Sources simply add tokens: the keys of all k sources are concatenated along the token axis, so
one softmax spreads each query's attention over every source (and over the learned extra
tokens). The normal path is one fused `scaled_dot_product_attention` call, which never
materialises the (queries x keys) matrix; its memory is flat in k. `attention_mass` is the
inspection path: it does form the logits, one chunk of queries at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossModalAttention(nn.Module):
    """softmax(Q K^T / sqrt(C)) V over source tokens plus optional learned extra K/V tokens.

    Dropout (training only) acts on the attention weights, nothing else: it makes the model
    learn to use several sources/positions instead of one, as in the paper.

    Value width vs. kernel: fused kernels (PyTorch's CPU flash kernel, CUDA flash) want one head
    size for q, k and v, but our values (V, pixels, K concatenated) are wider than the keys. We
    split the values into `heads` slices of width C and give every slice the *same* q and k via
    `expand` (stride 0, no copy): each head computes identical weights, so this is exactly
    single-head attention, with memory flat in the number of sources. Values whose width is not
    a multiple of C are zero-padded once, in the source cache, not per frame.

    Memory layout: `prepare(keys, values)` runs once per source set (in `encode_sources`); it
    appends the extra tokens and pads the values, so the per-frame `forward` copies nothing whose
    size grows with the number of sources.
    """

    def __init__(
        self,
        qk_dim: int,
        value_dim: int,
        num_extra_tokens: int = 4,
        extra_kv: bool = True,
        dropout: float = 0.0,
        residual_dim: int = 0,
    ) -> None:
        """`residual_dim`: the trailing value channels that only the residual path reads (pixels
        and K). Their extra-token values are a parameter of their own, so a model without the
        residual path has the very same other parameters (fine-tuning one from the other)."""
        super().__init__()
        self.qk_dim = qk_dim
        self.value_dim = value_dim
        self.heads = -(-value_dim // qk_dim)  # ceil
        self.padded_value_dim = self.heads * qk_dim
        self.dropout = dropout
        self.num_extra = num_extra_tokens if extra_kv else 0
        if self.num_extra > 0:
            # "nothing in the sources fits": learned tokens any query can fall back to
            self.extra_keys = nn.Parameter(torch.randn(self.num_extra, qk_dim) * qk_dim**-0.5)
            self.extra_values = nn.Parameter(torch.randn(self.num_extra, value_dim - residual_dim) * 0.02)
            self.extra_residual_values = (
                nn.Parameter(torch.randn(self.num_extra, residual_dim) * 0.02) if residual_dim else None
            )
        else:
            self.register_parameter("extra_keys", None)
            self.register_parameter("extra_values", None)
            self.extra_residual_values = None

    def pad_values(self, values: torch.Tensor) -> torch.Tensor:
        """(..., value_dim) -> (..., padded_value_dim) with zero channels (done once per source set)."""
        pad = self.padded_value_dim - values.shape[-1]
        return F.pad(values, (0, pad)) if pad else values

    def prepare(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source tokens -> attention memory: keys (B, S, C), values (B, S, value_dim) ->
        (B, S + E, C), (B, S + E, padded_value_dim), the extra tokens last."""
        values = self.pad_values(values)
        if self.extra_keys is None:
            return keys.contiguous(), values.contiguous()
        b = keys.shape[0]
        extra_v: torch.Tensor = self.extra_values
        if self.extra_residual_values is not None:
            extra_v = torch.cat([extra_v, self.extra_residual_values], dim=-1)
        extra_v = self.pad_values(extra_v.to(values.dtype))
        keys = torch.cat([keys, self.extra_keys.to(keys.dtype).expand(b, -1, -1)], dim=1)
        values = torch.cat([values, extra_v.expand(b, -1, -1)], dim=1)
        return keys, values

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries (B, L, C) and the memory from `prepare`: keys (B, S + E, C), values
        (B, S + E, padded_value_dim) -> (B, L, value_dim)."""
        # fused kernels need unit stride in the channel axis (a transposed conv map is not)
        queries, keys, values = queries.contiguous(), keys.contiguous(), values.contiguous()
        b, length, c = queries.shape
        h = self.heads
        p = self.dropout if self.training else 0.0
        q = queries[:, None].expand(b, h, length, c)
        k = keys[:, None].expand(b, h, keys.shape[1], c)
        v = values.reshape(b, values.shape[1], h, c).transpose(1, 2)  # (B, h, S, C)
        if p > 0:
            # dropout must drop the same weights in every slice (it is one attention matrix):
            # fused kernels draw per head, so train-time dropout uses the single-head call
            # (the math path on CPU; GPU kernels accept unequal q/v widths).
            out = F.scaled_dot_product_attention(
                queries[:, None], keys[:, None], values[:, None], dropout_p=p, scale=c**-0.5
            )
            return out[:, 0, :, : self.value_dim]
        out = F.scaled_dot_product_attention(q, k, v, scale=c**-0.5)  # (B, h, L, C)
        return out.transpose(1, 2).reshape(b, length, h * c)[..., : self.value_dim]

    @torch.no_grad()
    def attention_mass(
        self, queries: torch.Tensor, keys: torch.Tensor, num_sources: int, chunk_size: int = 1024
    ) -> torch.Tensor:
        """Per query, the attention mass on each source and on the extra tokens.

        queries (B, L, C), keys (B, k*T + E, C) from `prepare` (source by source, extra tokens
        last) -> (B, L, k + 1); the last column is the extra K/V (zeros when they are off). Rows
        sum to 1. Logits are formed for `chunk_size` queries at a time, so memory is
        chunk_size x keys, not L x keys.
        """
        s = keys.shape[1] - self.num_extra  # source tokens
        if s % num_sources:
            raise ValueError(f"{s} key tokens cannot be split over {num_sources} sources")
        chunks = []
        for start in range(0, queries.shape[1], chunk_size):
            attn = self.weights(queries[:, start : start + chunk_size], keys)
            per_source = attn[..., :s].reshape(attn.shape[0], attn.shape[1], num_sources, s // num_sources).sum(-1)
            extra = attn[..., s:].sum(-1, keepdim=True)  # zeros (empty sum) without extra tokens
            chunks.append(torch.cat([per_source, extra], dim=-1))
        return torch.cat(chunks, dim=1)

    def weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The attention matrix (softmax in fp32): queries (B, L, C), keys (B, S + E, C) from
        `prepare` -> (B, L, S + E), rows summing to 1 (no dropout)."""
        return torch.softmax(queries.float() @ keys.float().transpose(1, 2) * self.qk_dim**-0.5, dim=-1)
