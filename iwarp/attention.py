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
    """

    def __init__(self, qk_dim: int, value_dim: int, num_extra_tokens: int = 4, extra_kv: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.qk_dim = qk_dim
        self.dropout = dropout
        self.num_extra = num_extra_tokens if extra_kv else 0
        if self.num_extra > 0:
            # "nothing in the sources fits": learned tokens any query can fall back to
            self.extra_keys = nn.Parameter(torch.randn(self.num_extra, qk_dim) * qk_dim**-0.5)
            self.extra_values = nn.Parameter(torch.randn(self.num_extra, value_dim) * 0.02)
        else:
            self.register_parameter("extra_keys", None)
            self.register_parameter("extra_values", None)

    def with_extra(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the extra tokens after the source tokens: (B, S, C) -> (B, S + E, C)."""
        if self.extra_keys is None:
            return keys, values
        b = keys.shape[0]
        keys = torch.cat([keys, self.extra_keys.to(keys.dtype).expand(b, -1, -1)], dim=1)
        values = torch.cat([values, self.extra_values.to(values.dtype).expand(b, -1, -1)], dim=1)
        return keys, values

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries (B, L, C), keys (B, S, C), values (B, S, D) -> (B, L, D)."""
        keys, values = self.with_extra(keys, values)
        p = self.dropout if self.training else 0.0
        q, k, v = queries[:, None], keys[:, None], values[:, None]  # singleton head axis
        pad = v.shape[-1] - q.shape[-1]
        if q.device.type == "cpu" and pad > 0:
            # PyTorch's CPU flash kernel needs one head size for q, k and v (else it falls back to
            # the math path, which materialises q x k). Zero channels leave q.k unchanged.
            q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.qk_dim**-0.5)
        return out[:, 0]

    @torch.no_grad()
    def attention_mass(self, queries: torch.Tensor, keys: torch.Tensor, num_sources: int, chunk_size: int = 1024) -> torch.Tensor:
        """Per query, the attention mass on each source and on the extra tokens.

        queries (B, L, C), keys (B, k*T, C) ordered source by source -> (B, L, k + 1); the last
        column is the extra K/V (zeros when they are off). Rows sum to 1. Logits are formed for
        `chunk_size` queries at a time, so memory is chunk_size x keys, not L x keys.
        """
        b, s, _ = keys.shape
        if s % num_sources:
            raise ValueError(f"{s} key tokens cannot be split over {num_sources} sources")
        scale = self.qk_dim**-0.5
        all_keys = keys if self.extra_keys is None else torch.cat([keys, self.extra_keys.to(keys.dtype).expand(b, -1, -1)], 1)
        chunks = []
        for start in range(0, queries.shape[1], chunk_size):
            attn = torch.softmax(queries[:, start : start + chunk_size] @ all_keys.transpose(1, 2) * scale, dim=-1)
            per_source = attn[..., :s].reshape(attn.shape[0], attn.shape[1], num_sources, s // num_sources).sum(-1)
            extra = attn[..., s:].sum(-1, keepdim=True)  # zeros (empty sum) without extra tokens
            chunks.append(torch.cat([per_source, extra], dim=-1))
        return torch.cat(chunks, dim=1)
