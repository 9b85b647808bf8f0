"""Chapter 13 — three families from one set of blocks: GPT, BERT and the translator.

The encoder–decoder of chapters 6–7 splits into the two halves that most models in use today are:

* a **decoder-only** language model (GPT): chapter 6's layers — self-attention and the feed-forward
  network — under chapter 4's causal mask, trained to predict every next token (``causal_lm_loss``).
  There is no encoder, so the decoder layer loses its cross-attention and becomes the encoder layer
  again: the block is the same, the mask makes it a decoder. ``generate`` continues a prompt, greedily
  or by sampling (``sample_next``), with chapter 9's ``KVCache``.
* an **encoder-only** masked language model (BERT): the same layers under the padding mask alone, so
  every position sees the whole sentence; it is trained to restore the tokens that ``mask_tokens``
  hid (``masked_lm_loss``). Seeing both sides is what lets it fill in a blank, and what stops it from
  writing left to right.

``LanguageModel`` is both: ``LMConfig.causal`` chooses the mask, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_fraction, check_positive, check_positive_ints, check_token_ids
from .data import token_batches
from .decode import KVCache
from .embeddings import Embeddings, PositionalEncoding
from .encoder import Encoder, EncoderLayer
from .masks import padding_mask, target_mask
from .multihead import merge_heads, split_heads
from .tokenizer import UNK_ID
from .utils import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "IGNORE",
    "LMConfig",
    "LanguageModel",
    "causal_lm_loss",
    "top_k_logits",
    "sample_next",
    "LMCache",
    "next_token_logits",
    "generate",
    "mask_tokens",
    "masked_lm_loss",
    "lm_batch",
    "lm_batches",
    "perplexity",
    "fit",
]

IGNORE = -100  # the label of a position the loss skips (F.cross_entropy's default ignore_index)


@dataclass
class LMConfig:
    """A language model's sizes; ``causal`` makes it a GPT (True) or a BERT (False)."""

    vocab_size: int
    causal: bool = True
    N: int = 2
    d_model: int = 128
    d_ff: int = 512
    h: int = 4
    dropout: float = 0.1
    max_len: int = 128  # positions of the sinusoidal table
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        check_positive_ints(vocab_size=self.vocab_size, N=self.N, d_ff=self.d_ff, max_len=self.max_len)
        check_fraction(dropout=self.dropout)
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be a token id in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}")


class LanguageModel(nn.Module):
    """Embeddings, a stack of chapter-6 layers (pre-LN) and an output layer tied to the embeddings."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = Embeddings(c.vocab_size, c.d_model)
        self.pos = PositionalEncoding(c.d_model, max_len=c.max_len, dropout=c.dropout)
        self.blocks = Encoder(c.d_model, c.h, c.d_ff, c.N, c.dropout, norm_first=True)  # ends in a LayerNorm
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for p in self.parameters():  # Glorot/Xavier, as chapter 7's Transformer
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.head.weight = self.embed.lut.weight  # tied: one matrix reads tokens in and writes them out

    def mask(self, tokens: Tensor) -> Tensor:
        """GPT: not a pad and not in the future, ``(batch, 1, len, len)``; BERT: not a pad, ``(batch, 1, 1, len)``."""
        pad = self.config.pad_id
        return target_mask(tokens, pad) if self.config.causal else padding_mask(tokens, pad)

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids ``(batch, len)`` -> logits ``(batch, len, vocab)`` (unnormalised, for sampling)."""
        self._check_length(tokens.size(-1) if isinstance(tokens, Tensor) else 0)
        x = self.pos(self.embed(tokens))  # (batch, len, d_model); Embeddings checks the ids
        return self.head(self.blocks(x, self.mask(tokens)))  # (batch, len, vocab)

    def next_token_logits(self, cache: "LMCache", last_tokens: Tensor) -> Tensor:
        """One cached step of ``generate``: the module function ``next_token_logits`` (a later model may differ)."""
        return next_token_logits(self, cache, last_tokens)

    def _check_length(self, length: int) -> None:
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len={self.config.max_len} positions")


# --------------------------------------------------------------------------- GPT: the next token


def causal_lm_loss(logits: Tensor, tokens: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """Mean cross-entropy of predicting ``tokens[:, t + 1]`` from position ``t``; pad targets are skipped.

    ``logits`` ``(batch, len, vocab)`` come from ``tokens`` ``(batch, len)`` themselves: the causal mask
    is what makes this honest (position t has not seen token t + 1).
    """
    _check_logits(logits, tokens)
    predictions = logits[:, :-1]  # (batch, len - 1, vocab): the last position predicts nothing here
    targets = tokens[:, 1:]  # (batch, len - 1): shifted left by one
    return F.cross_entropy(predictions.flatten(0, 1), targets.flatten(), ignore_index=pad_id)


def top_k_logits(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of every row ``(..., vocab)``, set the rest to -inf (ties at the k-th kept)."""
    check_positive_ints(k=k)
    k = min(int(k), logits.size(-1))
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))


def sample_next(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw one token per row of ``logits`` ``(batch, vocab)`` from softmax(logits / temperature), top-k only.

    Temperature below 1 sharpens the distribution (towards greedy), above 1 flattens it; ``top_k`` keeps
    only the k most probable tokens. Returns ``(batch,)`` ids.
    """
    check_positive(temperature=temperature)
    logits = logits / temperature  # (batch, vocab)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)  # (batch,)


class LMCache(KVCache):
    """Chapter 9's ``KVCache`` with self-attention entries only: a decoder-only model has no memory."""

    def __init__(self, num_layers: int) -> None:  # (KVCache's own __init__ computes cross-attention keys)
        self.cross_keys, self.cross_values = [], []
        self.self_keys, self.self_values = [None] * num_layers, [None] * num_layers


def _layer_step(layer: EncoderLayer, i: int, x: Tensor, cache: LMCache) -> Tensor:
    """Layer ``i`` on the newest position ``x`` ``(batch, 1, d_model)``: its keys and values join the cache."""

    def self_attention(y: Tensor) -> Tensor:  # y: (batch, 1, d_model), after the layer's LayerNorm
        attn = layer.self_attn
        Q = split_heads(attn.W_Q(y), attn.num_heads)  # (batch, heads, 1, d_k)
        K, V = cache.append(i, split_heads(attn.W_K(y), attn.num_heads), split_heads(attn.W_V(y), attn.num_heads))
        return attn.W_O(merge_heads(attn.attend(Q, K, V, None)))  # (batch, 1, d_model): the cache holds the past

    x = layer.sublayer[0](x, self_attention)  # (batch, 1, d_model)
    return layer.sublayer[1](x, layer.feed_forward)  # (batch, 1, d_model)


def next_token_logits(model: LanguageModel, cache: LMCache, last_tokens: Tensor) -> Tensor:
    """Feed ``last_tokens`` ``(batch,)`` at position ``cache.length``; the logits of the token after it."""
    position = cache.length
    model._check_length(position + 1)
    x = model.embed(last_tokens[:, None])  # (batch, 1, d_model)
    x = model.pos.dropout(x + model.pos.pe[position].to(x.dtype))  # position t only
    for i, layer in enumerate(model.blocks.layers):
        x = _layer_step(layer, i, x, cache)  # (batch, 1, d_model)
    return model.head(model.blocks.norm(x))[:, 0]  # (batch, vocab)


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    eos_id: int | None = EOS_ID,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue ``prompt`` ``(batch, len)`` (no padding) by up to ``max_new_tokens`` tokens.

    ``greedy`` takes the most probable token, otherwise ``sample_next`` draws one. With ``use_cache`` the
    prompt goes in one token at a time and every step computes only the newest position (chapter 9);
    without it the whole sequence runs again at every step. Rows that produced ``eos_id`` are padded
    with ``pad_id`` afterwards. Runs in eval mode; returns ``(batch, len + new)`` ids.
    """
    _check_generate_args(model, prompt, max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        cache = LMCache(len(model.blocks.layers)) if use_cache else None
        logits = None
        if cache is not None:
            for t in range(prompt.size(1)):  # the prompt (a real system feeds it in one pass)
                logits = model.next_token_logits(cache, prompt[:, t])  # (batch, vocab)
        ys = prompt
        finished = torch.zeros(prompt.size(0), dtype=torch.bool, device=prompt.device)
        for _ in range(max_new_tokens):
            if cache is None:
                logits = model(ys)[:, -1]  # (batch, vocab): everything again
            token = logits.argmax(dim=-1) if greedy else sample_next(logits, temperature, top_k, generator)
            if eos_id is not None:
                token = token.masked_fill(finished, model.config.pad_id)  # (batch,)
                finished |= token == eos_id
            ys = torch.cat([ys, token[:, None]], dim=1)  # (batch, t + 1)
            if eos_id is not None and bool(finished.all()):
                break
            if cache is not None:
                logits = model.next_token_logits(cache, token)  # the newest position only
    finally:
        model.train(was_training)
    return ys


# --------------------------------------------------------------------------- BERT: the hidden token


def mask_tokens(
    tokens: Tensor,
    mask_id: int,
    p: float = 0.15,
    first_id: int = UNK_ID + 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's corruption: pick each ordinary token with probability ``p``; of the picked, 80 % become
    ``mask_id``, 10 % a random ordinary token, 10 % stay as they are.

    Ids below ``first_id`` (pad, bos, eos, unk) are never picked; random tokens come from
    ``[first_id, mask_id)``. Returns ``(inputs, labels)``, both ``(batch, len)``: ``labels`` holds the
    original token where one was picked and ``IGNORE`` elsewhere, so the loss counts picked positions only.
    """
    check_token_ids(tokens, lookup=False)
    check_fraction(p=p)
    if not 0 <= first_id < mask_id:
        raise ValueError(f"need 0 <= first_id < mask_id (random tokens lie between), got {first_id} and {mask_id}")
    picked = (torch.rand(tokens.shape, generator=generator) < p).to(tokens.device) & (tokens >= first_id)
    labels = tokens.masked_fill(~picked, IGNORE)  # (batch, len)
    action = torch.rand(tokens.shape, generator=generator).to(tokens.device)  # one draw decides mask/random/keep
    random_ids = torch.randint(first_id, mask_id, tokens.shape, generator=generator).to(tokens)
    inputs = tokens.masked_fill(picked & (action < 0.8), mask_id)  # 80 %: [MASK]
    inputs = torch.where(picked & (action >= 0.8) & (action < 0.9), random_ids, inputs)  # 10 %: a random token
    return inputs, labels  # the other 10 % keep their token (the model cannot tell which ones are picked)


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the picked positions only (``labels != IGNORE``); 0 if none was picked."""
    _check_logits(logits, labels)
    if not bool((labels != IGNORE).any()):
        return logits.sum() * 0.0  # nothing to predict in this batch (keeps the graph, no NaN)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


# --------------------------------------------------------------------------- data and training


def lm_batch(sentences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> Tensor:
    """Token ids of sentences -> ``(batch, longest + 2)``: ``<bos> ids <eos>``, padded on the right."""
    if not sentences:
        raise ValueError("cannot make a batch of no sentences")
    out = torch.full((len(sentences), max(len(s) for s in sentences) + 2), pad_id, dtype=torch.long)
    for b, ids in enumerate(sentences):
        out[b, : len(ids) + 2] = torch.as_tensor([BOS_ID, *ids, EOS_ID], dtype=torch.long)
    return out


def lm_batches(sentences: Sequence[Sequence[int]], max_tokens: int, seed: int = 0) -> list[Tensor]:
    """Chapter 8's length-sorted batches of about ``max_tokens`` tokens, each made by ``lm_batch``."""
    groups = token_batches([(len(s), len(s)) for s in sentences], max_tokens, seed=seed)
    return [lm_batch([sentences[i] for i in group]) for group in groups]


@torch.no_grad()
def perplexity(model: LanguageModel, batches: Iterable[Tensor]) -> float:
    """exp(mean next-token loss per predicted token) of a causal LM over ``batches`` (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for tokens in batches:
            n = int((tokens[:, 1:] != model.config.pad_id).sum())
            total += float(causal_lm_loss(model(tokens), tokens, model.config.pad_id)) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to score: the batches are empty")
    return math.exp(total / count)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor], Tensor],
    batches: Sequence[Tensor],
    steps: int,
    lr: float = 2e-3,
    warmup: int = 100,
) -> list[float]:
    """AdamW for ``steps`` steps over ``batches`` (cycled): linear warmup, then cosine decay to 10 %.

    ``loss_fn(model, batch)`` returns the loss of one batch. Returns the loss of every step.
    """
    check_positive_ints(steps=steps, warmup=warmup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    def schedule(step: int) -> float:  # the factor of lr at this step
        return min((step + 1) / warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    for step in range(steps):
        loss = loss_fn(model, batches[step % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


# --------------------------------------------------------------------------- checks


def _check_logits(logits: Tensor, labels: Tensor) -> None:
    check_token_ids(labels, "tokens", lookup=False)
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != labels.shape:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        want = f"(batch, len, vocab) with (batch, len) = {tuple(labels.shape)}"
        raise ValueError(f"logits must have shape {want}, got {shape}")


def _check_generate_args(model: LanguageModel, prompt: Tensor, max_new_tokens: int) -> None:
    check_positive_ints(max_new_tokens=max_new_tokens)
    check_token_ids(prompt, "prompt", vocab_size=model.config.vocab_size)
    if not model.config.causal:
        raise ValueError("generate needs a causal (GPT) model: a masked LM sees both sides, it cannot write in order")
    if bool((prompt == model.config.pad_id).any()):
        raise ValueError("the prompt must not contain padding: give prompts of equal length, one batch per length")
    model._check_length(prompt.size(1) + max_new_tokens - 1)  # the last new token is not fed back
