"""Chapter 1 — the baseline the course argues against: a GRU encoder–decoder (seq2seq).

The encoder reads the source one token at a time and keeps one hidden state. Without attention
the decoder sees the source only through the encoder's *final* hidden state: one fixed-size vector
for a sequence of any length (Sutskever et al., 2014). With additive attention (Bahdanau et al.,
2015) every decoder step looks back at all encoder outputs h_1 .. h_m and takes a weighted average:

    score(s, h_j) = v^T tanh(W s + U h_j),   alpha = softmax_j(score),   context = sum_j alpha_j h_j.

Masks follow the course convention: boolean, ``True`` = may attend.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_positive_ints, check_token_id, check_token_ids
from .utils import BOS_ID, EOS_ID, PAD_ID

__all__ = ["RNNEncoder", "AdditiveAttention", "RNNDecoder", "Seq2Seq", "make_seq2seq"]


class RNNEncoder(nn.Module):
    """Embed the source tokens and run a GRU over them, left to right."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, pad_id: int = PAD_ID) -> None:
        super().__init__()
        check_positive_ints(vocab_size=vocab_size, emb_dim=emb_dim, hidden_dim=hidden_dim)
        check_token_id("pad_id", pad_id, vocab_size)
        self.vocab_size, self.hidden_dim, self.pad_id = vocab_size, hidden_dim, pad_id
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.gru = nn.GRU(emb_dim, hidden_dim, batch_first=True)

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """``src`` ``(batch, src_len)``, padded at the end -> ``(outputs, final)``.

        ``outputs`` ``(batch, src_len, hidden)`` holds h_1 .. h_m; ``final`` ``(batch, hidden)`` is the
        state right after each row's last real token (the GRU only looks left, so trailing padding
        never reaches it).
        """
        check_token_ids(src, "src", self.vocab_size)
        lengths = (src != self.pad_id).sum(dim=1)  # (batch,)
        if bool((lengths == 0).any()):
            raise ValueError("every src row needs at least one non-padding token")
        outputs, _ = self.gru(self.embed(src))  # (batch, src_len, hidden)
        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, self.hidden_dim)  # (batch, 1, hidden)
        final = outputs.gather(1, last).squeeze(1)  # (batch, hidden): h_m of each row
        return outputs, final


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(s, h) = v^T tanh(W s + U h), softmax over the source positions."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        check_positive_ints(hidden_dim=hidden_dim)
        self.hidden_dim = hidden_dim
        self.W = nn.Linear(hidden_dim, hidden_dim, bias=False)  # applied to the decoder state s
        self.U = nn.Linear(hidden_dim, hidden_dim)  # applied to every encoder output h_j
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(
        self, query: Tensor, keys: Tensor, mask: Tensor | None = None, projected_keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``query`` ``(batch, hidden)``, ``keys`` ``(batch, src_len, hidden)`` -> ``(context, weights)``.

        ``mask`` ``(batch, src_len)`` is boolean, ``True`` = may attend; masked positions get weight
        exactly 0 (a row with nothing to attend to gets all-zero weights). ``projected_keys`` may pass
        ``self.U(keys)``, computed once per source instead of once per decoder step.
        Returns ``context`` ``(batch, hidden)`` and ``weights`` ``(batch, src_len)``.
        """
        if query.dim() != 2 or query.size(-1) != self.hidden_dim:
            raise ValueError(f"query must have shape (batch, hidden={self.hidden_dim}), got {tuple(query.shape)}")
        if keys.dim() != 3 or keys.size(-1) != self.hidden_dim or keys.size(0) != query.size(0):
            raise ValueError(
                f"keys must have shape (batch={query.size(0)}, src_len, hidden={self.hidden_dim}), "
                f"got {tuple(keys.shape)}"
            )
        if mask is not None:
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
            if mask.shape != keys.shape[:2]:
                raise ValueError(
                    f"mask must have shape (batch, src_len) = {tuple(keys.shape[:2])}, got {tuple(mask.shape)}"
                )
        if projected_keys is None:
            projected_keys = self.U(keys)  # (batch, src_len, hidden)
        energy = torch.tanh(self.W(query).unsqueeze(1) + projected_keys)  # (batch, src_len, hidden)
        scores = self.v(energy).squeeze(-1)  # (batch, src_len)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: padding gets no weight
            scores = scores.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # all-masked rows: no NaN
        weights = torch.softmax(scores, dim=-1)  # (batch, src_len), rows sum to 1
        if mask is not None:
            weights = weights * mask  # zeroes only the all-masked rows; the others are unchanged
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (batch, hidden): sum_j alpha_j h_j
        return context, weights


class RNNDecoder(nn.Module):
    """A GRU that writes the target one token at a time, optionally attending over the encoder outputs.

    Without attention the only link to the source is the initial hidden state (the encoder's final
    state). With attention every step also reads ``context = AdditiveAttention(s_{t-1}, h_1..h_m)``.
    """

    def __init__(
        self, vocab_size: int, emb_dim: int, hidden_dim: int, attention: bool = True, pad_id: int = PAD_ID
    ) -> None:
        super().__init__()
        check_positive_ints(vocab_size=vocab_size, emb_dim=emb_dim, hidden_dim=hidden_dim)
        check_token_id("pad_id", pad_id, vocab_size)
        if not isinstance(attention, bool):
            raise ValueError(f"attention must be True or False, got {attention!r}")
        self.vocab_size, self.hidden_dim = vocab_size, hidden_dim
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.attention = AdditiveAttention(hidden_dim) if attention else None
        context_dim = hidden_dim if attention else 0
        self.gru = nn.GRU(emb_dim + context_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim + context_dim, vocab_size)  # logits from [s_t; c_t]

    def step(
        self,
        token: Tensor,
        hidden: Tensor,
        enc_outputs: Tensor | None = None,
        src_mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One step: ``token`` ``(batch,)``, ``hidden`` ``(batch, hidden)`` -> ``(logits, hidden, weights)``.

        ``logits`` is ``(batch, vocab)``; ``weights`` ``(batch, src_len)``, or ``None`` without attention.
        ``projected_keys`` is an optional cache of ``self.attention.U(enc_outputs)``.
        """
        x = self.embed(token)  # (batch, emb)
        if self.attention is None:  # the source is inside `hidden`, and nowhere else
            _, h = self.gru(x.unsqueeze(1), hidden.unsqueeze(0))  # h: (1, batch, hidden)
            hidden = h.squeeze(0)  # (batch, hidden)
            return self.out(hidden), hidden, None
        if enc_outputs is None:
            raise ValueError("a decoder with attention needs enc_outputs (batch, src_len, hidden)")
        context, weights = self.attention(hidden, enc_outputs, src_mask, projected_keys)  # (batch, hidden)
        x = torch.cat([x, context], dim=-1).unsqueeze(1)  # (batch, 1, emb + hidden)
        _, h = self.gru(x, hidden.unsqueeze(0))  # h: (1, batch, hidden)
        hidden = h.squeeze(0)  # (batch, hidden)
        return self.out(torch.cat([hidden, context], dim=-1)), hidden, weights

    def forward(
        self, tgt_in: Tensor, hidden: Tensor, enc_outputs: Tensor | None = None, src_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: ``tgt_in`` ``(batch, tgt_len)`` -> ``(logits, weights)``.

        ``logits`` is ``(batch, tgt_len, vocab)``; ``weights`` ``(batch, tgt_len, src_len)`` with
        attention, else ``None``. ``hidden`` ``(batch, hidden)`` is the initial state.
        """
        check_token_ids(tgt_in, "tgt_in", self.vocab_size)
        if hidden.shape != (tgt_in.size(0), self.hidden_dim):
            raise ValueError(
                f"hidden must have shape (batch={tgt_in.size(0)}, hidden={self.hidden_dim}), got {tuple(hidden.shape)}"
            )
        if self.attention is None:  # nothing but h_0 depends on the source: one nn.GRU call for all steps
            outputs, _ = self.gru(self.embed(tgt_in), hidden.unsqueeze(0))  # (batch, tgt_len, hidden)
            return self.out(outputs), None
        if enc_outputs is None:
            raise ValueError("a decoder with attention needs enc_outputs (batch, src_len, hidden)")
        projected_keys = self.attention.U(enc_outputs)  # (batch, src_len, hidden), the same at every step
        logits, weights = [], []
        for t in range(tgt_in.size(1)):  # step t attends with s_{t-1}: a loop, one step after another
            step_logits, hidden, step_weights = self.step(tgt_in[:, t], hidden, enc_outputs, src_mask, projected_keys)
            logits.append(step_logits)
            weights.append(step_weights)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1)  # (b, tgt_len, vocab), (b, tgt_len, src_len)


class Seq2Seq(nn.Module):
    """Encoder + decoder: ``forward(src, tgt_in)`` gives next-token logits under teacher forcing."""

    def __init__(self, encoder: RNNEncoder, decoder: RNNDecoder) -> None:
        super().__init__()
        if encoder.hidden_dim != decoder.hidden_dim:
            raise ValueError(
                f"encoder and decoder must share hidden_dim, got {encoder.hidden_dim} and {decoder.hidden_dim}"
            )
        self.encoder, self.decoder = encoder, decoder
        self.attn_weights: Tensor | None = None  # (batch, tgt_len, src_len) of the last call, with attention

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """``src`` ``(batch, src_len)`` and ``tgt_in`` ``(batch, tgt_len)`` (starting with <bos>) -> logits.

        Returns ``(batch, tgt_len, vocab)``: position t predicts target token t + 1.
        """
        enc_outputs, final = self.encoder(src)  # (batch, src_len, hidden), (batch, hidden)
        if tgt_in.dim() >= 1 and tgt_in.size(0) != src.size(0):
            raise ValueError(f"src and tgt_in must have the same batch size, got {src.size(0)} and {tgt_in.size(0)}")
        src_mask = src != self.encoder.pad_id  # (batch, src_len): True = a real token, may attend
        logits, self.attn_weights = self.decoder(tgt_in, final, enc_outputs, src_mask)
        return logits

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, max_len: int, bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> Tensor:
        """Generate up to ``max_len`` tokens per row, always taking the most likely next token.

        Returns ``(batch, max_len)`` ids without the leading <bos>; after a row's <eos> the rest is
        padding. With attention, ``self.attn_weights`` then holds ``(batch, max_len, src_len)``.
        """
        check_positive_ints(max_len=max_len)
        check_token_id("bos_id", bos_id, self.decoder.vocab_size)
        check_token_id("eos_id", eos_id, self.decoder.vocab_size)
        enc_outputs, hidden = self.encoder(src)  # (batch, src_len, hidden), (batch, hidden)
        src_mask = src != self.encoder.pad_id  # (batch, src_len)
        batch, pad = src.size(0), self.encoder.pad_id
        out = torch.full((batch, max_len), pad, dtype=torch.long, device=src.device)
        weights = torch.zeros(batch, max_len, src.size(1), device=src.device)
        token = torch.full((batch,), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(batch, dtype=torch.bool, device=src.device)  # rows that have written <eos>
        attention = self.decoder.attention
        projected_keys = None if attention is None else attention.U(enc_outputs)  # (batch, src_len, hidden)
        for t in range(max_len):
            logits, hidden, step_weights = self.decoder.step(token, hidden, enc_outputs, src_mask, projected_keys)
            token = logits.argmax(dim=-1)  # (batch,)
            out[:, t] = token.masked_fill(done, pad)
            if step_weights is not None:
                weights[:, t] = step_weights * ~done[:, None]
            done = done | (token == eos_id)
            if bool(done.all()):
                break
        self.attn_weights = None if attention is None else weights
        return out


def make_seq2seq(
    vocab_size: int, emb_dim: int = 32, hidden_dim: int = 64, attention: bool = True, pad_id: int = PAD_ID
) -> Seq2Seq:
    """A GRU seq2seq with one vocabulary for source and target, with or without additive attention."""
    encoder = RNNEncoder(vocab_size, emb_dim, hidden_dim, pad_id=pad_id)
    decoder = RNNDecoder(vocab_size, emb_dim, hidden_dim, attention=attention, pad_id=pad_id)
    return Seq2Seq(encoder, decoder)
