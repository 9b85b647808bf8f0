"""Chapter 9 — decoding: a key/value cache, greedy search and beam search.

At inference the decoder writes one token per step. ``greedy_decode`` (chapter 7) runs the whole
prefix through the decoder at every step, so step t recomputes t positions. It does not have to:
with the causal mask, position i never sees a later position, so the keys and values that every
decoder layer computed for positions 0..t-1 are exactly the same at step t. ``KVCache`` keeps them;
``decode_step`` computes only the newest position and attends over the cached keys and values.
The cross-attention keys and values come from the encoder memory, which does not change at all:
they are computed once per sentence.

On top of that step, two searches:

* ``greedy_search`` takes the most probable token at every step;
* ``beam_search`` keeps the ``beam_size`` most probable prefixes of every sentence, all sentences
  and beams in one batch, and ranks finished hypotheses by the GNMT length-normalised score
  ``log P(y | x) / lp(y)`` with ``lp(y) = ((5 + |y|) / 6) ** alpha`` (Wu et al., 2016).

``make_decoder`` wraps either one as the ``decoder(model, src, src_mask, max_len)`` callable that
``evaluate.translate`` takes.
"""

from __future__ import annotations

import contextlib
import math
from numbers import Real
from typing import Callable, Iterator

import torch
from torch import Tensor

from .checks import check_positive_ints, check_token_id, check_token_ids
from .decoder import DecoderLayer
from .embeddings import LearnedPositionalEmbedding, PositionalEncoding
from .masks import causal_mask
from .model import Transformer
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .utils import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "KVCache",
    "decode_step",
    "gnmt_length_penalty",
    "greedy_search",
    "beam_search",
    "score_sequences",
    "make_decoder",
]

DecoderFn = Callable[[Transformer, Tensor, "Tensor | None", int], Tensor]  # what evaluate.translate calls


# --------------------------------------------------------------------------- the cache


class KVCache:
    """The keys and values a Transformer's decoder has already computed for one batch of prefixes.

    For decoder layer ``i``:

    * ``self_keys[i]``, ``self_values[i]``: ``(batch, heads, t, d_k)``, the self-attention keys and
      values of the ``t`` target positions fed so far (``None`` before the first step); every
      ``decode_step`` appends one position.
    * ``cross_keys[i]``, ``cross_values[i]``: ``(batch, heads, src_len, d_k)``, the cross-attention
      keys and values of the encoder memory, computed here once and reused at every step.
    """

    def __init__(self, model: Transformer, memory: Tensor) -> None:
        layers = model.decoder.layers
        self.cross_keys: list[Tensor] = []
        self.cross_values: list[Tensor] = []
        for layer in layers:
            attn = layer.cross_attn
            self.cross_keys.append(split_heads(attn.W_K(memory), attn.num_heads))  # (batch, heads, src_len, d_k)
            self.cross_values.append(split_heads(attn.W_V(memory), attn.num_heads))  # (batch, heads, src_len, d_k)
        self.self_keys: list[Tensor | None] = [None] * len(layers)
        self.self_values: list[Tensor | None] = [None] * len(layers)

    @property
    def length(self) -> int:
        """Number of target positions cached so far (the position of the next token)."""
        return 0 if self.self_keys[-1] is None else self.self_keys[-1].size(2)

    def append(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Add the newest position's ``keys``/``values`` ``(batch, heads, 1, d_k)`` of ``layer``.

        Returns all keys and values of that layer so far, ``(batch, heads, t + 1, d_k)`` each.
        """
        old_k, old_v = self.self_keys[layer], self.self_values[layer]
        if old_k is not None:
            keys = torch.cat([old_k, keys], dim=2)  # (batch, heads, t + 1, d_k)
            values = torch.cat([old_v, values], dim=2)  # (batch, heads, t + 1, d_k)
        self.self_keys[layer], self.self_values[layer] = keys, values
        return keys, values

    def reorder(self, index: Tensor) -> None:
        """Keep row ``index[j]`` as the new row ``j`` of every cached tensor (beam search's reshuffle).

        ``index`` is a ``(new_batch,)`` tensor of row numbers; rows may repeat or disappear.
        """
        for cached in (self.self_keys, self.self_values, self.cross_keys, self.cross_values):
            for i, t in enumerate(cached):
                if t is not None:
                    cached[i] = t.index_select(0, index)  # (new_batch, heads, len, d_k)


def _attend(attn: MultiHeadAttention, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> Tensor:
    """The heads of ``attn`` for queries ``Q`` ``(batch, heads, 1, d_k)`` over ``K`` and ``V``, mixed by W_O."""
    return attn.W_O(merge_heads(attn.attend(Q, K, V, mask)))  # the same attention as in training (fused or not)


def _layer_step(layer: DecoderLayer, i: int, x: Tensor, cache: KVCache, src_mask: Tensor | None) -> Tensor:
    """Decoder layer ``i`` on the newest position ``x`` ``(batch, 1, d_model)``, using the cache."""

    def self_attention(y: Tensor) -> Tensor:  # y: (batch, 1, d_model), already normed when pre-LN
        attn = layer.self_attn
        Q = split_heads(attn.W_Q(y), attn.num_heads)  # (batch, heads, 1, d_k)
        K, V = cache.append(
            i, split_heads(attn.W_K(y), attn.num_heads), split_heads(attn.W_V(y), attn.num_heads)
        )  # (batch, heads, t + 1, d_k): the past from the cache plus the newest position
        return _attend(attn, Q, K, V, None)  # no mask: the cache holds only positions <= t

    def cross_attention(y: Tensor) -> Tensor:
        attn = layer.cross_attn
        Q = split_heads(attn.W_Q(y), attn.num_heads)  # (batch, heads, 1, d_k)
        return _attend(attn, Q, cache.cross_keys[i], cache.cross_values[i], src_mask)

    # The layer's own Add & Norm modules, so post-LN and pre-LN are both handled as in training.
    x = layer.sublayer[0](x, self_attention)  # (batch, 1, d_model)
    x = layer.sublayer[1](x, cross_attention)  # (batch, 1, d_model)
    return layer.sublayer[2](x, layer.feed_forward)  # (batch, 1, d_model)


def _position_table(model: Transformer) -> Tensor:
    """The target positional table ``(max_positions, d_model)``, sinusoidal or learned."""
    pos = model.tgt_pos
    if isinstance(pos, PositionalEncoding):
        return pos.pe  # (max_len, d_model), a fixed buffer
    if isinstance(pos, LearnedPositionalEmbedding):
        return pos.pos.weight  # (max_len, d_model), trained
    raise ValueError(f"unsupported target positional module {type(pos).__name__}")


def decode_step(model: Transformer, cache: KVCache, src_mask: Tensor | None, last_tokens: Tensor) -> Tensor:
    """One incremental decoder step: the log-probabilities of the token after ``last_tokens``.

    ``last_tokens`` ``(batch,)`` are the newest target tokens, at position ``cache.length``; all
    earlier positions are in ``cache``, which grows by one position. ``src_mask`` is the source
    padding mask of ``model.decode`` (e.g. ``(batch, 1, 1, src_len)``). Returns ``(batch, tgt_vocab)``,
    equal (up to float rounding) to the last position of a full ``model.decode`` over the prefix.
    Call it in eval mode: dropout is applied as the modules are set.
    """
    position = cache.length
    table = _position_table(model)  # (max_positions, d_model)
    if position >= table.size(0):
        raise ValueError(
            f"position {position} is beyond the {table.size(0)} target positions of the model "
            "(TransformerConfig.max_len); decode fewer tokens"
        )
    if src_mask is not None and src_mask.dim() == 3:
        src_mask = src_mask.unsqueeze(1)  # (batch, 1, src_len) -> (batch, 1, 1, src_len), as attention does
    x = model.tgt_embed(last_tokens[:, None])  # (batch, 1, d_model), scaled by sqrt(d_model)
    x = model.tgt_pos.dropout(x + table[position].to(x.dtype))  # (batch, 1, d_model): position t only
    for i, layer in enumerate(model.decoder.layers):
        x = _layer_step(layer, i, x, cache, src_mask)  # (batch, 1, d_model)
    return model.generator(model.decoder.norm(x))[:, 0]  # (batch, tgt_vocab)


class _NextToken:
    """log P(next token | prefix) for a batch of prefixes ``ys``: with the cache, or the whole prefix."""

    def __init__(self, model: Transformer, memory: Tensor, src_mask: Tensor | None, use_cache: bool) -> None:
        self.model, self.memory, self.src_mask = model, memory, src_mask
        self.cache = KVCache(model, memory) if use_cache else None

    def __call__(self, ys: Tensor) -> Tensor:
        """``ys`` ``(batch, t)`` -> ``(batch, tgt_vocab)``."""
        if self.cache is not None:
            return decode_step(self.model, self.cache, self.src_mask, ys[:, -1])  # only the newest token
        tgt_mask = causal_mask(ys.size(1), device=ys.device)  # (t, t)
        out = self.model.decode(self.memory, self.src_mask, ys, tgt_mask)  # (batch, t, d_model): all again
        return self.model.generator(out[:, -1])  # (batch, tgt_vocab)

    def reorder(self, index: Tensor) -> None:
        """Row ``j`` continues the prefix of row ``index[j]``."""
        if self.cache is not None:
            self.cache.reorder(index)  # the memory itself is no longer read: its keys/values are cached
        else:
            self.memory = self.memory.index_select(0, index)  # (new_batch, src_len, d_model)
        if self.src_mask is not None and self.src_mask.size(0) > 1:
            self.src_mask = self.src_mask.index_select(0, index)


# --------------------------------------------------------------------------- checks and helpers


def _check_search_args(
    model: Transformer, src: Tensor, src_mask: Tensor | None, max_len: int, bos_id: int, eos_id: int, pad_id: int
) -> None:
    """Raise ``ValueError`` naming the first bad argument of a search."""
    if not isinstance(model, Transformer):
        raise ValueError(f"model must be a transformer_lib Transformer, got {type(model).__name__}")
    check_token_ids(src, "src")
    if src.size(0) == 0:
        raise ValueError(f"src must have at least one sentence, got shape {tuple(src.shape)}")
    if src_mask is not None and (not isinstance(src_mask, Tensor) or src_mask.dtype != torch.bool):
        raise ValueError("src_mask must be None or a boolean tensor (True = may attend), e.g. from padding_mask")
    check_positive_ints(max_len=max_len)
    positions = _position_table(model).size(0)
    if max_len > positions:
        raise ValueError(
            f"max_len={max_len} exceeds the {positions} target positions of the model (TransformerConfig.max_len)"
        )
    for name, token in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        check_token_id(name, token, model.config.tgt_vocab)


def _check_beam_args(beam_size: int, length_penalty: float) -> None:
    check_positive_ints(beam_size=beam_size)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, Real) or not 0.0 <= length_penalty < math.inf:
        raise ValueError(f"length_penalty (alpha) must be a finite number >= 0, got {length_penalty!r}")


@contextlib.contextmanager
def _inference(model: Transformer) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd inside; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def gnmt_length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """The GNMT length penalty ``lp = ((5 + length) / 6) ** alpha`` (1 for ``alpha = 0``).

    Hypotheses are ranked by ``log P(y | x) / lp(|y|)``, which offsets the bias of plain
    log-probabilities (a sum of negative terms) towards short outputs.
    """
    return ((5 + length) / 6) ** alpha


# --------------------------------------------------------------------------- greedy search


def greedy_search(
    model: Transformer,
    src: Tensor,
    src_mask: Tensor | None,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    use_cache: bool = True,
) -> Tensor:
    """Greedy decoding: always the most probable next token.

    Returns ``(batch, <= max_len + 1)`` ids starting with ``bos_id``; a sentence that produced
    ``eos_id`` is filled with ``pad_id`` afterwards, and decoding stops when all have finished.
    ``use_cache=False`` recomputes the whole prefix every step (as ``model.greedy_decode`` does);
    both give the same tokens. The model runs in eval mode and gets its mode back.
    """
    _check_search_args(model, src, src_mask, max_len, bos_id, eos_id, pad_id)
    with _inference(model):
        memory = model.encode(src, src_mask)  # (batch, src_len, d_model): once per sentence
        next_log_probs = _NextToken(model, memory, src_mask, use_cache)
        ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)  # (batch, 1)
        finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (batch,)
        for _ in range(max_len):
            next_token = next_log_probs(ys).argmax(dim=-1)  # (batch,)
            next_token = next_token.masked_fill(finished, pad_id)  # finished rows only get padding
            finished |= next_token == eos_id
            ys = torch.cat([ys, next_token[:, None]], dim=1)  # (batch, t + 1)
            if bool(finished.all()):
                break
    return ys


# --------------------------------------------------------------------------- beam search


def beam_search(
    model: Transformer,
    src: Tensor,
    src_mask: Tensor | None,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    use_cache: bool = True,
    return_scores: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Batched beam search with the GNMT length penalty; the best hypothesis of every sentence.

    All ``batch * beam_size`` prefixes run through the decoder together. At each step every live
    prefix is extended by every token; among these candidates (per sentence):

    * a candidate ending in ``eos_id`` that ranks among the ``beam_size`` best is *finished*: it
      is scored ``log P / lp(length)``, ``lp = ((5 + length) / 6) ** length_penalty``, with
      ``length`` counting the generated tokens including ``<eos>``, and kept if it beats the
      best finished hypothesis so far;
    * the ``beam_size`` best candidates not ending in ``eos_id`` become the new live beams (the
      cache is reordered to follow them).

    A sentence is done when no live beam can still beat its best finished hypothesis: a live
    prefix's log-probability can only fall, so ``score / lp(max_len)`` bounds what it can reach.
    Decoding stops when all sentences are done, or after ``max_len`` tokens, when the live beams
    count as (unfinished) hypotheses of length ``max_len``. With ``beam_size=1`` and
    ``length_penalty=0`` this is exactly greedy search.

    Returns ``(batch, len)`` ids starting with ``bos_id``, padded with ``pad_id`` after ``<eos>``;
    with ``return_scores=True`` also the ``(batch,)`` length-normalised log-probabilities.
    """
    _check_search_args(model, src, src_mask, max_len, bos_id, eos_id, pad_id)
    _check_beam_args(beam_size, length_penalty)
    batch, k, vocab = src.size(0), beam_size, model.config.tgt_vocab
    if vocab < 2:
        raise ValueError(f"beam search needs a target vocabulary of at least 2 tokens, got {vocab}")
    device = src.device
    with _inference(model):
        memory = model.encode(src, src_mask).repeat_interleave(k, dim=0)  # (batch * k, src_len, d_model)
        if src_mask is not None and src_mask.size(0) == batch and batch > 1:
            src_mask = src_mask.repeat_interleave(k, dim=0)  # (batch * k, ...): beams share their sentence's mask
        next_log_probs = _NextToken(model, memory, src_mask, use_cache)
        ys = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)  # (batch * k, 1)
        scores = torch.full((batch, k), -math.inf, device=device)  # (batch, k): log P of each live prefix
        scores[:, 0] = 0.0  # at the start only one beam is live, the others would duplicate it
        best = _BestHypotheses(batch, max_len, pad_id, device)  # the best finished hypothesis of each sentence
        sentences, ranks = torch.arange(batch, device=device), torch.arange(2 * k, device=device)  # (batch,), (2k,)
        max_lp = gnmt_length_penalty(max_len, length_penalty)
        for step in range(1, max_len + 1):  # step = number of generated tokens after this step
            log_probs = next_log_probs(ys).view(batch, k, vocab)  # (batch, k, vocab)
            candidates = (scores[:, :, None] + log_probs).view(batch, k * vocab)  # (batch, k * vocab)
            # At most k candidates end in <eos> (one per beam), so the 2k best hold >= k others.
            top_scores, top_index = candidates.topk(2 * k, dim=1)  # (batch, 2k), best first
            top_beam, top_token = top_index // vocab, top_index % vocab  # (batch, 2k) each
            is_eos = top_token == eos_id  # (batch, 2k)
            lp = gnmt_length_penalty(step, length_penalty)

            # 1. Finished: <eos> candidates among the k best, normalised by their length.
            finished = torch.where(is_eos & (ranks < k), top_scores / lp, -math.inf)  # (batch, 2k)
            fin_score, fin_rank = finished.max(dim=1)  # (batch,)
            prefixes = ys.view(batch, k, step)[sentences, top_beam[sentences, fin_rank]]  # (batch, step)
            best.offer(fin_score, prefixes, eos_id)

            # 2. Live: the k best candidates that do not end in <eos> (stable sort keeps the ranking).
            keep = torch.sort(is_eos.to(torch.uint8), dim=1, stable=True).indices[:, :k]  # (batch, k)
            scores = top_scores.gather(1, keep)  # (batch, k), still best first
            beam, token = top_beam.gather(1, keep), top_token.gather(1, keep)  # (batch, k) each
            index = (sentences[:, None] * k + beam).view(-1)  # (batch * k,): the row each beam continues
            ys = torch.cat([ys.index_select(0, index), token.view(-1, 1)], dim=1)  # (batch * k, step + 1)
            next_log_probs.reorder(index)

            if step == max_len:  # out of length: the best live prefix is an unfinished hypothesis
                best.offer(scores[:, 0] / lp, ys.view(batch, k, step + 1)[:, 0], None)
                break
            # 3. Done when no live beam can catch up: its log P only falls, lp grows to lp(max_len) at most.
            if bool((best.score >= scores[:, 0] / max_lp).all()):
                break
    out = best.tokens[:, : int(best.length.max())]  # (batch, len)
    return (out, best.score) if return_scores else out


class _BestHypotheses:
    """The best hypothesis found so far for each of ``batch`` sentences: its tokens, score and length."""

    def __init__(self, batch: int, max_len: int, pad_id: int, device: torch.device) -> None:
        self.pad_id = pad_id
        self.score = torch.full((batch,), -math.inf, device=device)  # (batch,): length-normalised log P
        self.tokens = torch.full((batch, max_len + 1), pad_id, dtype=torch.long, device=device)
        self.length = torch.ones(batch, dtype=torch.long, device=device)  # (batch,): <bos> only so far

    def offer(self, score: Tensor, prefixes: Tensor, last: int | None) -> None:
        """Keep ``prefixes`` ``(batch, t)`` (followed by ``last``) where ``score`` beats the best so far."""
        improved = score > self.score  # (batch,)
        if not bool(improved.any()):
            return
        t = prefixes.size(1)
        rows = self.tokens[improved]  # (n, max_len + 1)
        rows.fill_(self.pad_id)
        rows[:, :t] = prefixes[improved]
        if last is not None:
            rows[:, t] = last
        self.tokens[improved] = rows
        self.score[improved] = score[improved]
        self.length[improved] = t + (last is not None)


# --------------------------------------------------------------------------- scoring and wiring


def score_sequences(
    model: Transformer,
    src: Tensor,
    src_mask: Tensor | None,
    ys: Tensor,
    eos_id: int,
    length_penalty: float = 0.0,
) -> Tensor:
    """Length-normalised log-probabilities of given outputs, in one teacher-forced pass.

    ``ys`` ``(batch, len)`` starts with ``<bos>`` (e.g. a search's output). A hypothesis ends at
    its first ``eos_id`` (included; anything after it is padding) or, without one, at the end of
    the row. Returns ``(batch,)``: ``log P(hypothesis | src) / lp(length)`` as ranked by
    ``beam_search`` (``length_penalty=0`` gives the plain log-probability).
    """
    _check_beam_args(1, length_penalty)
    if ys.dim() != 2 or ys.size(1) < 2:
        raise ValueError(f"ys must have shape (batch, len >= 2) and start with <bos>, got {tuple(ys.shape)}")
    with _inference(model):
        tgt_in, tgt_out = ys[:, :-1], ys[:, 1:]  # (batch, len - 1) each
        log_probs = model(src, tgt_in, src_mask, causal_mask(tgt_in.size(1), device=ys.device))  # (batch, len-1, V)
        token_lp = log_probs.gather(2, tgt_out[:, :, None])[:, :, 0]  # (batch, len - 1)
        is_eos = (tgt_out == eos_id).long()  # (batch, len - 1)
        after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # (batch, len - 1): strictly after the first <eos>
        length = (~after_eos).sum(dim=1)  # (batch,)
        total = token_lp.masked_fill(after_eos, 0.0).sum(dim=1)  # (batch,)
        return total / gnmt_length_penalty(length.to(total.dtype), length_penalty)


def make_decoder(
    method: str = "greedy",
    beam_size: int = 4,
    length_penalty: float = 0.6,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
    use_cache: bool = True,
) -> DecoderFn:
    """A ``decoder(model, src, src_mask, max_len) -> ys`` callable for ``evaluate.translate``.

    ``method`` is ``"greedy"`` or ``"beam"`` (``beam_size``, ``length_penalty`` apply to beam
    search only). The ids default to the course tokenizer's ``<bos>`` = 1, ``<eos>`` = 2,
    ``<pad>`` = 0. The callable never asks for more target positions than the model has: a
    ``max_len`` beyond ``TransformerConfig.max_len`` is lowered to it.
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    _check_beam_args(beam_size, length_penalty)

    def decoder(model: Transformer, src: Tensor, src_mask: Tensor | None, max_len: int) -> Tensor:
        max_len = min(max_len, _position_table(model).size(0))
        if method == "greedy":
            return greedy_search(model, src, src_mask, max_len, bos_id, eos_id, pad_id, use_cache=use_cache)
        return beam_search(
            model, src, src_mask, max_len, bos_id, eos_id, pad_id, beam_size, length_penalty, use_cache=use_cache
        )

    decoder.__doc__ = f"{method} decoding" + (
        f" (beam {beam_size}, alpha {length_penalty})" if method == "beam" else ""
    )
    return decoder
