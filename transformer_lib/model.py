"""Chapter 7 — the whole Transformer.

Source tokens are embedded, positions added, and encoded into a *memory*; target tokens (shifted
right, starting with <bos>) are embedded and decoded against that memory; the ``Generator`` maps
each decoder vector to log-probabilities over the target vocabulary.

Training feeds the whole shifted target at once (teacher forcing, the causal mask keeps it honest);
inference has no target, so ``greedy_decode`` grows it one token at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import (
    check_choice,
    check_divisible,
    check_fraction,
    check_positive,
    check_positive_ints,
    check_token_id,
    check_token_ids,
)
from .decoder import Decoder
from .embeddings import Embeddings, LearnedPositionalEmbedding, PositionalEncoding
from .encoder import Encoder
from .masks import causal_mask

__all__ = ["TransformerConfig", "Generator", "Transformer", "make_model", "greedy_decode"]


@dataclass
class TransformerConfig:
    """Every size of the model in one place; the defaults are the paper's base model."""

    src_vocab: int
    tgt_vocab: int
    N: int = 6  # layers in the encoder and in the decoder
    d_model: int = 512
    d_ff: int = 2048
    h: int = 8  # attention heads
    dropout: float = 0.1
    share_embeddings: bool = False  # one matrix for source, target and generator (paper, section 3.4)
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN
    final_norm: bool | None = None  # LayerNorm after each stack; default: norm_first
    positional: str = "sinusoidal"  # or "learned"
    max_len: int = 5000
    layer_norm_eps: float = 1e-5
    fused: bool = False  # PyTorch's fused attention kernel instead of chapter 2's function

    def __post_init__(self) -> None:
        check_positive_ints(src_vocab=self.src_vocab, tgt_vocab=self.tgt_vocab, N=self.N, d_ff=self.d_ff)
        check_positive_ints(max_len=self.max_len)
        check_divisible(self.d_model, self.h, "h")
        check_fraction(dropout=self.dropout)
        check_positive(layer_norm_eps=self.layer_norm_eps)
        check_choice("positional", self.positional, ("sinusoidal", "learned"))
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(
                f"share_embeddings needs one shared vocabulary, got src_vocab={self.src_vocab} "
                f"and tgt_vocab={self.tgt_vocab}"
            )


class Generator(nn.Module):
    """The final linear layer and (log-)softmax: ``(batch, len, d_model)`` -> ``(batch, len, vocab)``."""

    def __init__(self, d_model: int, vocab: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        """Log-probabilities over the vocabulary for every position."""
        return F.log_softmax(self.proj(x), dim=-1)  # (batch, len, vocab)


class Transformer(nn.Module):
    """The encoder–decoder Transformer of "Attention Is All You Need"."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = self.config = config
        layer_args = dict(
            d_model=c.d_model,
            num_heads=c.h,
            d_ff=c.d_ff,
            N=c.N,
            dropout=c.dropout,
            norm_first=c.norm_first,
            final_norm=c.final_norm,
            layer_norm_eps=c.layer_norm_eps,
            fused=c.fused,
        )
        self.encoder = Encoder(**layer_args)
        self.decoder = Decoder(**layer_args)
        self.src_embed = Embeddings(c.src_vocab, c.d_model)
        self.tgt_embed = self.src_embed if c.share_embeddings else Embeddings(c.tgt_vocab, c.d_model)
        Positions = PositionalEncoding if c.positional == "sinusoidal" else LearnedPositionalEmbedding
        self.src_pos = Positions(c.d_model, max_len=c.max_len, dropout=c.dropout)
        self.tgt_pos = Positions(c.d_model, max_len=c.max_len, dropout=c.dropout)
        self.generator = Generator(c.d_model, c.tgt_vocab)
        for p in self.parameters():  # Glorot/Xavier, as The Annotated Transformer does (the paper gives no init)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if c.share_embeddings:
            self.generator.proj.weight = self.tgt_embed.lut.weight  # tie the output layer too

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Source ids ``(batch, src_len)`` -> memory ``(batch, src_len, d_model)``."""
        return self.encoder(self.src_pos(self.src_embed(src)), src_mask)

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Target ids ``(batch, tgt_len)`` and memory -> decoder states ``(batch, tgt_len, d_model)``."""
        return self.decoder(self.tgt_pos(self.tgt_embed(tgt)), memory, tgt_mask, src_mask)

    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced pass: log-probabilities ``(batch, tgt_len, tgt_vocab)`` of the next tokens."""
        check_token_ids(src, "src")
        check_token_ids(tgt, "tgt")
        if src.size(0) != tgt.size(0):
            raise ValueError(f"src and tgt must have the same batch size, got {src.size(0)} and {tgt.size(0)}")
        memory = self.encode(src, src_mask)  # (batch, src_len, d_model)
        return self.generator(self.decode(memory, src_mask, tgt, tgt_mask))  # (batch, tgt_len, tgt_vocab)


def make_model(
    src_vocab: int,
    tgt_vocab: int,
    N: int = 6,
    d_model: int = 512,
    d_ff: int = 2048,
    h: int = 8,
    dropout: float = 0.1,
    share_embeddings: bool = False,
    **config_kwargs: Any,
) -> Transformer:
    """Build a Transformer; the defaults are the paper's base model.

    Extra keywords (``norm_first``, ``final_norm``, ``positional``, ``max_len``, ...) go to
    ``TransformerConfig``, which checks every size.
    """
    config = TransformerConfig(
        src_vocab,
        tgt_vocab,
        N=N,
        d_model=d_model,
        d_ff=d_ff,
        h=h,
        dropout=dropout,
        share_embeddings=share_embeddings,
        **config_kwargs,
    )
    return Transformer(config)


@torch.no_grad()
def greedy_decode(
    model: Transformer,
    src: Tensor,
    src_mask: Tensor | None,
    max_len: int,
    bos_id: int,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> Tensor:
    """Translate step by step, always taking the most probable next token.

    Returns ``(batch, <= max_len + 1)`` token ids starting with ``bos_id``. Once a sentence has
    produced ``eos_id`` it is filled with ``pad_id`` (default: ``eos_id``); decoding stops early
    when every sentence has finished. The model runs in eval mode (no dropout) and is put back
    into the mode it was in.
    """
    _check_decode_args(model, src, max_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    was_training = model.training
    model.eval()  # dropout would make the "most probable" token random
    try:
        memory = model.encode(src, src_mask)  # (batch, src_len, d_model): computed once, reused every step
        ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)  # (batch, 1)
        finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        fill = eos_id if pad_id is None else pad_id
        for _ in range(max_len):
            tgt_mask = causal_mask(ys.size(1), device=src.device)  # (t, t)
            out = model.decode(memory, src_mask, ys, tgt_mask)  # (batch, t, d_model)
            next_token = model.generator(out[:, -1]).argmax(dim=-1)  # (batch,): only the last position is new
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, fill)  # finished rows only get padding
                finished |= next_token == eos_id
            ys = torch.cat([ys, next_token[:, None]], dim=1)  # (batch, t + 1)
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return ys


def _check_decode_args(model: nn.Module, src: Tensor, max_len: int, **ids: int | None) -> None:
    """Arguments of ``greedy_decode``: checked before the first step, not when decoding runs out of positions."""
    check_positive_ints(max_len=max_len)
    check_token_ids(src, "src")
    config = getattr(model, "config", None)  # a TransformerConfig; other models are taken as they are
    if isinstance(config, TransformerConfig):
        if max_len > config.max_len:  # step max_len feeds position max_len - 1 to the decoder
            raise ValueError(f"max_len={max_len} exceeds the model's {config.max_len} target positions (max_len)")
        for name, token in ids.items():
            if token is not None:
                check_token_id(name, token, config.tgt_vocab)
