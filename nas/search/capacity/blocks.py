"""Transformer pieces of the dynamic-capacity ViT: patch embedding, attention and MLP blocks, token scoring.

Each piece is also one unit of the latency table (``nas.search.capacity.latency``), so the profiled module and the
module inside the model are the same code.

Token sparsification scores every patch token by one of two rules (the space's ``pruning.scoring``):

- ``learned``: DynamicViT (Rao et al., 2021): a light prediction module scores each patch from its own features and a
  masked global average. In training the kept set is drawn with Gumbel noise and a straight-through estimator.
- ``cls_attention``: EViT (Liang et al., 2022): a patch's score is the attention the class token pays it, read with
  the next block's own LayerNorm and query/key projections: no parameters, nothing to learn. Training keeps the
  top ``k`` exactly as inference does.

In training dropped tokens stay in the batch (it stays rectangular) and attention is masked so that no kept token
attends to them. At inference ``TokenSelect`` keeps the top ``k`` tokens with TopK and a Gather of rows, so the
later blocks really process fewer tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas.search.gumbel import gumbel_perturb


def masked_softmax(logits: torch.Tensor, keep: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DynamicViT's attention masking: keys with ``keep`` 0 get no weight (each token still sees itself).

    ``logits`` is B x H x T x T, ``keep`` B x T (0/1 values, gradients pass through it).
    """
    t = logits.shape[-1]
    policy = keep[:, None, None, :]
    eye = torch.eye(t, dtype=logits.dtype, device=logits.device)
    policy = policy + (1.0 - policy) * eye
    w = (logits - logits.amax(-1, keepdim=True)).exp() * policy
    return (w + eps / t) / (w.sum(-1, keepdim=True) + eps)


def sincos_positions(side: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position codes for a ``side`` x ``side`` grid (row, column), ``side**2`` x ``dim``."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                                indexing="ij")
    return torch.cat([f(c.reshape(-1, 1) * omega) for c in (rows, cols) for f in (torch.sin, torch.cos)], 1)


class PatchEmbed(nn.Module):
    """Image -> patch tokens with a class token in front and learned position embeddings.

    With ``stem_channels`` > 0 a 3x3 convolution (BN, GELU) runs before the patch projection: an early
    convolution makes a small transformer train several times faster on small data (Xiao et al., 2021). The
    position embeddings start from 2-D sine-cosine codes (as in MAE) rather than noise, for the same reason:
    on digits they cut the epochs a dense ViT needs to reach 95% by more than half (measured).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, patches: int, stem_channels: int = 0):
        super().__init__()
        if stem_channels:
            self.proj = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, 1, 1), nn.BatchNorm2d(stem_channels),
                                      nn.GELU(), nn.Conv2d(stem_channels, dim, patch_size, patch_size))
        else:
            self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        side = math.isqrt(patches)
        with torch.no_grad():
            if dim % 4 == 0 and side * side == patches:
                self.pos_embed[0, 1:] = sincos_positions(side, dim)
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed


class AttentionBlock(nn.Module):
    """``x + MHSA(LN(x))``; with ``keep`` given, attention to dropped tokens is masked out."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q * self.scale) @ k.transpose(-2, -1)
        attn = logits.softmax(-1) if keep is None else masked_softmax(logits, keep)
        return x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class MlpBlock(nn.Module):
    """``x + MLP(LN(x))``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TokenScorer(nn.Module):
    """DynamicViT's prediction module: a keep logit per patch token from its own and (masked) global features.

    ``h = GELU(W1 LN(x))``; ``score = w3 GELU(Wl h + Wg mean_kept(h))``. This is DynamicViT's local/global
    predictor with a shorter output MLP, so that at batch 1 it costs a fraction of a transformer block.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = max(2, hidden - hidden % 2)
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU())
        self.local = nn.Linear(hidden, hidden // 2)
        self.glob = nn.Linear(hidden, hidden // 2, bias=False)
        self.out = nn.Linear(hidden // 2, 1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the patches of ``x`` (B x T x D, class token first); ``keep`` (B x T) masks dropped ones."""
        h = self.inp(x[:, 1:])
        if keep is None:
            g = h.mean(1, keepdim=True)
        else:
            keep = keep[:, 1:]
            g = (h * keep[..., None]).sum(1, keepdim=True) / keep.sum(1, keepdim=True)[..., None].clamp_min(1e-6)
        return self.out(F.gelu(self.local(h) + self.glob(g))).squeeze(-1)


class ClassAttentionScorer(nn.Module):
    """EViT's rule: each patch's score is the class token's attention to it (mean over heads) in ``block``, the
    attention block that follows the pruning stage, from that block's LayerNorm and query/key weights (shared, not
    copied: the scorer adds no parameters).

    No key is computed: the class token's query is folded into the key weights, ``q . (W_k h + b_k) =
    (W_k^T q) . h + q . b_k``, and the last term, the same for every token, cancels in the softmax. That is one
    D-vector per head against the tokens instead of a D x D projection of all of them."""

    def __init__(self, block: AttentionBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        blk = self.block
        b, t, d = x.shape
        h = blk.norm(x)
        q = F.linear(h[:, :1], blk.qkv.weight[:d], blk.qkv.bias[:d]) * blk.scale  # B x 1 x D
        w_k = blk.qkv.weight[d:2 * d].reshape(blk.heads, d // blk.heads, d)  # H x D/H x D
        u = q.reshape(b, blk.heads, 1, d // blk.heads) @ w_k  # B x H x 1 x D: each head's query on the tokens
        logits = u @ h.transpose(1, 2)[:, None]  # B x H x 1 x T
        if keep is not None:
            logits = logits.masked_fill(keep[:, None, None, :] < 0.5, float("-inf"))
        return logits.softmax(-1)[:, :, 0, 1:].mean(1)


def topk_keep(scores: torch.Tensor, keep: torch.Tensor, k: int) -> torch.Tensor:
    """Training-time selection without noise or gradient (EViT): the top ``k`` ``scores`` among kept patches as a
    0/1 mask, multiplied into ``keep`` so that a dropped token stays dropped."""
    idx = scores.detach().masked_fill(keep.detach() < 0.5, float("-inf")).topk(k, dim=1).indices
    return keep * torch.zeros_like(scores).scatter(1, idx, 1.0)


def gumbel_topk_keep(logits: torch.Tensor, keep: torch.Tensor, k: int, generator=None) -> torch.Tensor:
    """Training-time selection: the top ``k`` of ``logits + Gumbel noise`` among kept tokens, as a 0/1 mask.

    The forward value is the hard mask; gradients reach the logits through ``sigmoid(logits)``
    (straight-through), multiplied into the previous mask so that a dropped token stays dropped.
    """
    noisy = gumbel_perturb(logits.detach(), generator).masked_fill(keep.detach() < 0.5, float("-inf"))
    idx = noisy.topk(k, dim=1).indices
    hard = torch.zeros_like(logits).scatter(1, idx, 1.0)
    soft = torch.sigmoid(logits)
    return keep * (hard + soft - soft.detach())


class TokenSelect(nn.Module):
    """Inference-time token pruning: score the patch tokens, keep the top ``k`` (TopK + Gather)."""

    def __init__(self, scorer: TokenScorer | ClassAttentionScorer, keep_patches: int):
        super().__init__()
        self.scorer = scorer
        self.k = keep_patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        b, n, d = patches.shape
        if self.k >= n:
            return x
        idx = self.scorer(x).topk(self.k, dim=1).indices  # B x k
        # one Gather of whole rows on a flattened index: cheaper in ONNX Runtime than Expand + GatherElements
        flat = (idx + torch.arange(b, device=x.device)[:, None] * n).reshape(-1)
        kept = patches.reshape(-1, d)[flat].reshape(b, self.k, d)
        return torch.cat([cls, kept], 1)


class Head(nn.Module):
    """Class token -> LayerNorm -> linear classifier."""

    def __init__(self, dim: int, classes: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x[:, 0])))
