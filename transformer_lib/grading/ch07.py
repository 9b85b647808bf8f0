"""Chapter 7 exercises — the decoder and the whole model.

* ``07.decoder_mask`` — the decoder's self-attention mask, causal and padding at once (``decoder_mask``);
* ``07.decoder_layer`` — a post-LN decoder layer (``DecoderLayer``), against ``nn.TransformerDecoderLayer``;
* ``07.greedy_decode`` — greedy decoding with a Transformer (``greedy_decode``).

Oracles: the library's ``target_mask``, PyTorch's ``nn.TransformerDecoderLayer`` with copied weights, and
the library's ``greedy_decode``. A tiny hand-made "counting model" (``CountingModel``, the interface of
``Transformer``: ``encode``, ``decode``, ``generator``) makes greedy decoding fully predictable, so a
message can say where the learner's tokens stop following from the tokens before them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.masks import causal_mask, target_mask
from transformer_lib.model import Transformer, greedy_decode, make_model

from .ch06 import (
    ATOL,
    RTOL,
    attribute,
    build,
    copy_ffn,
    copy_mha,
    differs,
    expect_gradients,
    length_mask,
    project,
    randn,
    randomise,
)
from .core import Exercise, Mismatch, expect, expect_close, expect_equal, expect_shape, expect_type, register

D_MODEL, HEADS, D_FF = 16, 4, 32
TGT_LENGTHS = [6, 4, 1]  # real tokens per target row of the test batch
SRC_LENGTHS = [4, 2, 3]  # real tokens per source row
TGT_LEN, SRC_LEN = 6, 4


# --------------------------------------------------------------------------- 07.decoder_mask

decoder_mask = register(
    Exercise("07.decoder_mask", "The decoder's self-attention mask", target="decoder_mask", timeout_s=20)
)


def _tokens(lengths: list[int], length: int, pad_id: int = 0, seed: int = 0, vocab: int = 9) -> Tensor:
    """``(batch, length)`` random ids in [3, vocab) after ``lengths[b]`` real ones of row b, ``pad_id`` after."""
    ids = torch.randint(3, vocab, (len(lengths), length), generator=torch.Generator().manual_seed(seed))
    ids = torch.where(ids == pad_id, ids + 1, ids)  # no accidental pad among the real tokens
    return ids.masked_fill(~length_mask(lengths, length), pad_id)


def _mask_of(decoder_mask: Any, tokens: Tensor, pad_id: int) -> Tensor:
    """The learner's mask, checked to be a bool tensor of shape ``(batch, 1, len, len)``."""
    mask = decoder_mask(tokens, pad_id)
    batch, length = tokens.shape
    expect_shape(mask, (batch, 1, length, length), f"the mask for tokens of shape {tuple(tokens.shape)}")
    expect(mask.dtype == torch.bool, f"the mask should be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    return mask


def _first(cells: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in cells.nonzero()[0])


@decoder_mask.test("shape (batch, 1, tgt_len, tgt_len) and dtype bool")
def _(decoder_mask: Any) -> None:
    _mask_of(decoder_mask, _tokens(TGT_LENGTHS, TGT_LEN, seed=1), 0)


@decoder_mask.test("True means 'may attend': every real token sees itself")
def _(decoder_mask: Any) -> None:
    tokens = _tokens(TGT_LENGTHS, TGT_LEN, seed=2)
    mask = _mask_of(decoder_mask, tokens, 0)
    diagonal = mask[:, 0].diagonal(dim1=-2, dim2=-1)  # (batch, len): may query t attend to key t?
    hidden = ~diagonal & length_mask(TGT_LENGTHS, TGT_LEN)
    if bool(hidden.all()):
        raise Mismatch("no real token may attend to itself: is True used for 'blocked' instead of 'may attend'?")
    if bool(hidden.any()):
        b, t = _first(hidden)
        raise Mismatch(f"in sentence {b}, position {t} may not attend to itself (the diagonal is hidden)")


@decoder_mask.test("no query sees a later position")
def _(decoder_mask: Any) -> None:
    tokens = _tokens([TGT_LEN] * 2, TGT_LEN, seed=3)  # no padding at all
    mask = _mask_of(decoder_mask, tokens, 0)[:, 0]  # (batch, q, k)
    future = torch.ones(TGT_LEN, TGT_LEN, dtype=torch.bool).triu(1)  # (q, k): k > q
    leak = mask & future
    if bool(leak.any()):
        b, q, k = _first(leak)
        raise Mismatch(f"future leak: in sentence {b}, query position {q} may attend to key position {k}")
    missing = ~mask & ~future
    if bool(missing.any()):
        b, q, k = _first(missing)
        raise Mismatch(f"without padding, query position {q} should see key position {k} (an earlier one), but may not")


@decoder_mask.test("<pad> keys are hidden, <pad> queries are not")
def _(decoder_mask: Any) -> None:
    tokens = _tokens(TGT_LENGTHS, TGT_LEN, seed=4)
    mask = _mask_of(decoder_mask, tokens, 0)[:, 0]  # (batch, q, k)
    real = length_mask(TGT_LENGTHS, TGT_LEN)  # (batch, len)
    sees_pad = mask & ~real[:, None, :]
    if bool(sees_pad.any()):
        b, q, k = _first(sees_pad)
        raise Mismatch(f"in sentence {b}, query position {q} may attend to key position {k}, which is <pad>")
    causal = torch.ones(TGT_LEN, TGT_LEN, dtype=torch.bool).tril()
    blind_pad_query = ~mask & causal & real[:, None, :] & ~real[:, :, None]
    if bool(blind_pad_query.any()):
        b, q, k = _first(blind_pad_query)
        raise Mismatch(
            f"in sentence {b}, the <pad> query at position {q} may not attend to the real key {k}: only the keys "
            "should be masked for padding (the queries' outputs are ignored later)"
        )


@decoder_mask.test("equals the library's target_mask (another batch, pad_id = 0)", points=2)
def _(decoder_mask: Any) -> None:
    tokens = _tokens([3, 7, 5, 7], 7, seed=5)
    expect_equal(_mask_of(decoder_mask, tokens, 0), target_mask(tokens, 0), "the mask")


# --------------------------------------------------------------------------- 07.decoder_layer

decoder_layer = register(
    Exercise(
        "07.decoder_layer",
        "Decoder layer (masked self-attention, cross-attention, FFN)",
        target="DecoderLayer",
        timeout_s=30,
    )
)


def _decoder_layer(DecoderLayer: Any, dropout: float = 0.0) -> tuple[nn.Module, nn.TransformerDecoderLayer]:
    """The learner's layer with the weights of a random post-LN ``nn.TransformerDecoderLayer`` copied in."""
    ours = build(DecoderLayer, D_MODEL, HEADS, D_FF, dropout=dropout)
    what = "your DecoderLayer"
    ref = nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True)
    randomise(ref, seed=41)  # three different norms
    copy_mha(attribute(ours, "self_attn", nn.Module, what), ref.self_attn, "your self_attn")
    copy_mha(attribute(ours, "cross_attn", nn.Module, what), ref.multihead_attn, "your cross_attn")
    copy_ffn(attribute(ours, "feed_forward", nn.Module, what), ref.linear1, ref.linear2, "your feed_forward")
    for name, norm in (("norm1", ref.norm1), ("norm2", ref.norm2), ("norm3", ref.norm3)):
        attribute(ours, name, nn.LayerNorm, what).load_state_dict(norm.state_dict())
    return ours, ref.train()  # training mode with dropout 0: PyTorch's plain path


@dataclass
class _Batch:
    x: Tensor  # (batch, tgt_len, d_model)
    memory: Tensor  # (batch, src_len, d_model)
    tgt_mask: Tensor  # ours, (batch, 1, tgt_len, tgt_len), True = may attend
    memory_mask: Tensor  # ours, (batch, 1, 1, src_len)
    tgt_real: Tensor  # (batch, tgt_len)
    src_real: Tensor  # (batch, src_len)

    def reference(self, ref: nn.TransformerDecoderLayer) -> Tensor:
        """PyTorch's output (its masks: True = blocked)."""
        return ref(
            self.x,
            self.memory,
            tgt_mask=~causal_mask(self.x.size(1)),
            tgt_key_padding_mask=~self.tgt_real,
            memory_key_padding_mask=~self.src_real,
        )


def _batch(
    seed: int,
    tgt_lengths: list[int] = TGT_LENGTHS,
    src_lengths: list[int] = SRC_LENGTHS,
    tgt_len: int = TGT_LEN,
    src_len: int = SRC_LEN,
) -> _Batch:
    tgt_real, src_real = length_mask(tgt_lengths, tgt_len), length_mask(src_lengths, src_len)
    return _Batch(
        x=randn(len(tgt_lengths), tgt_len, D_MODEL, seed=seed),
        memory=randn(len(src_lengths), src_len, D_MODEL, seed=seed + 1),
        tgt_mask=tgt_real[:, None, None, :] & causal_mask(tgt_len),
        memory_mask=src_real[:, None, None, :],
        tgt_real=tgt_real,
        src_real=src_real,
    )


@decoder_layer.test("output shape (target length 6, source length 4)")
def _(DecoderLayer: Any) -> None:
    layer, _ = _decoder_layer(DecoderLayer)
    b = _batch(seed=42)
    expect_shape(layer(b.x, b.memory, b.tgt_mask, b.memory_mask), tuple(b.x.shape), "the output")


@decoder_layer.test("no position sees a later one (the target mask is applied)")
def _(DecoderLayer: Any) -> None:
    layer, _ = _decoder_layer(DecoderLayer)
    b = _batch(seed=43, tgt_lengths=[TGT_LEN] * 3)  # no target padding: only the causal part matters
    y = b.x.clone()
    y[:, 3:] = randn(3, TGT_LEN - 3, D_MODEL, seed=44, scale=3.0)  # change positions 3, 4, 5 only
    with torch.no_grad():
        a, c = layer(b.x, b.memory, b.tgt_mask, b.memory_mask), layer(y, b.memory, b.tgt_mask, b.memory_mask)
    expect(
        not differs(a[:, :3], c[:, :3]),
        "future leak: outputs at positions 0-2 changed when only positions 3-5 of x changed",
    )


def _calls(module: nn.Module) -> tuple[list[dict], Any]:
    """Record the (query, key, value, mask) arguments of every call of ``module``; returns (calls, hook handle)."""
    calls: list[dict] = []
    signature = inspect.signature(module.forward)

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            calls.append(dict(signature.bind(*args, **kwargs).arguments))
        except TypeError:
            calls.append({})

    return calls, module.register_forward_pre_hook(hook, with_kwargs=True)


@decoder_layer.test("cross-attention: queries from the decoder, keys and values from the memory")
def _(DecoderLayer: Any) -> None:
    layer, _ = _decoder_layer(DecoderLayer)
    b = _batch(seed=45)
    calls, handle = _calls(layer.cross_attn)
    error: Exception | None = None
    try:
        with torch.no_grad():
            layer(b.x, b.memory, b.tgt_mask, b.memory_mask)
    except Exception as exc:  # e.g. queries of the source's length added to x: say why, if the calls show it
        error = exc
    finally:
        handle.remove()
    if error is not None and len(calls) != 1:
        raise error
    expect(len(calls) == 1, f"cross_attn was called {len(calls)} times, expected once")
    args = calls[0]
    query = args.get("query")
    expect(
        isinstance(query, Tensor) and query.dim() == 3, "cross_attn got no query tensor of shape (batch, len, d_model)"
    )
    expect(
        query.shape[1] == TGT_LEN,
        f"the queries of cross-attention have length {query.shape[1]}: they do not "
        f"come from the decoder (target length {TGT_LEN}, source length {SRC_LEN})",
    )
    for name in ("key", "value"):
        t = args.get(name)
        expect(
            isinstance(t, Tensor) and t.shape == b.memory.shape and not differs(t, b.memory, 1e-6),
            f"the {name}s of cross-attention are not the encoder's memory",
        )
    expect(
        differs(query, b.x),
        "the queries of cross-attention are the layer's raw input x: they should come from the "
        "output of the first sub-layer",
    )
    if error is not None:
        raise error


@decoder_layer.test("<pad> positions of the source are hidden (the memory mask is applied)")
def _(DecoderLayer: Any) -> None:
    layer, _ = _decoder_layer(DecoderLayer)
    b = _batch(seed=46)
    memory = b.memory.clone()
    memory[~b.src_real] = randn(int((~b.src_real).sum()), D_MODEL, seed=47, scale=3.0)  # other vectors at <pad>
    with torch.no_grad():
        a = layer(b.x, b.memory, b.tgt_mask, b.memory_mask)
        c = layer(b.x, memory, b.tgt_mask, b.memory_mask)
    expect(not differs(a, c), "the output changed when only the <pad> positions of the memory changed")


@decoder_layer.test("values match nn.TransformerDecoderLayer", points=2)
def _(DecoderLayer: Any) -> None:
    layer, ref = _decoder_layer(DecoderLayer)
    b = _batch(seed=48)
    with torch.no_grad():
        out, expected = layer(b.x, b.memory, b.tgt_mask, b.memory_mask), b.reference(ref)
    expect_close(out, expected, "the output (with target and memory masks)", atol=ATOL, rtol=RTOL)


@decoder_layer.test("gradients reach x, the memory and every parameter")
def _(DecoderLayer: Any) -> None:
    layer, _ = _decoder_layer(DecoderLayer)
    b = _batch(seed=49)
    x, memory = b.x.requires_grad_(), b.memory.requires_grad_()
    out = layer(x, memory, b.tgt_mask, b.memory_mask)
    expect_type(out, Tensor, "the output")
    project(out, seed=50).backward()
    expect_gradients(layer, "DecoderLayer")
    for name, t in (("x", x), ("the memory", memory)):
        expect(t.grad is not None and bool(t.grad.abs().sum() > 0), f"no gradient reached {name}")


# --------------------------------------------------------------------------- 07.greedy_decode

greedy = register(Exercise("07.greedy_decode", "Greedy decoding", target="greedy_decode", timeout_s=30))


class CountingModel(nn.Module):
    """A hand-made stand-in for a trained ``Transformer`` whose next token is fully predictable.

    It "translates" a source sentence ``s_1 ... s_n`` into the symbols counted from ``s_1`` up to ``s_n``,
    then ``<eos>``: after ``<bos>`` comes ``s_1``; after a symbol comes the next symbol (cyclically), or
    ``<eos>`` when the symbol is ``s_n``; after anything else (``<eos>``, ``<pad>``) comes the symbol
    ``s_1``. So every token depends on the token fed before it. Same interface as ``Transformer``:
    ``encode(src, src_mask)``, ``decode(memory, src_mask, tgt, tgt_mask)``, ``generator(states)`` and
    ``forward(src, tgt, src_mask, tgt_mask)``; it records every target prefix it was asked to decode.
    """

    grading_exports = ("encode", "decode")  # the methods the learner's code may call (it runs in another process)

    def __init__(self, vocab: int = 12, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0) -> None:
        super().__init__()
        self.vocab, self.bos_id, self.eos_id, self.pad_id = vocab, bos_id, eos_id, pad_id
        self.symbols = [i for i in range(vocab) if i not in (bos_id, eos_id, pad_id)]
        self.generator = _LogSoftmax()
        self.config = _Config(tgt_vocab=vocab)
        self.decoded: list[Tensor] = []  # every tgt it was given
        self.dummy = nn.Parameter(torch.zeros(()))  # so that .parameters() and next(...).device work

    def first_and_last(self, src: Tensor) -> Tensor:
        """``(batch, 2)``: each source row's first and last real (non-pad) symbol."""
        real = src != self.pad_id  # (batch, src_len)
        last = (real.long().cumsum(1) * real).argmax(1)  # index of the last real token
        return torch.stack([src[:, 0], src.gather(1, last[:, None])[:, 0]], dim=1)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """``(batch, src_len)`` -> a "memory" ``(batch, 1, 2)`` holding each row's first and last symbol."""
        return self.first_and_last(src)[:, None, :].float()

    def next_tokens(self, memory: Tensor, tgt: Tensor) -> Tensor:
        """``(batch, t)`` prefixes -> ``(batch, t)``: the token that follows each position."""
        first, last = memory[:, 0, 0].long()[:, None], memory[:, 0, 1].long()[:, None]  # (batch, 1) each
        table = torch.tensor(
            [
                self.symbols[(self.symbols.index(i) + 1) % len(self.symbols)] if i in self.symbols else -1
                for i in range(self.vocab)
            ]
        )
        succ = table[tgt.clamp(0, self.vocab - 1)]  # (batch, t)
        out = torch.where(tgt == last, torch.full_like(tgt, self.eos_id), succ)
        return torch.where((tgt == self.bos_id) | (succ < 0), first.expand_as(tgt), out)

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Decoder "states" ``(batch, t, vocab)``: 10 at the next token, 0 elsewhere."""
        if tgt.dim() != 2 or tgt.size(1) == 0:
            raise ValueError(f"tgt must be token ids of shape (batch, len >= 1), got {tuple(tgt.shape)}")
        if memory.size(0) != tgt.size(0):
            raise ValueError(f"memory and tgt must have the same batch size, got {memory.size(0)} and {tgt.size(0)}")
        self.decoded.append(tgt.detach().clone())
        return F.one_hot(self.next_tokens(memory, tgt), self.vocab).float() * 10.0

    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """Log-probabilities ``(batch, t, vocab)`` of the next tokens (teacher forcing)."""
        return self.generator(self.decode(self.encode(src, src_mask), src_mask, tgt, tgt_mask))

    def translate(self, src: Tensor, max_len: int) -> list[list[int]]:
        """What correct greedy decoding returns, row by row (before padding): ``<bos>`` + tokens."""
        rows = []
        for first, last in self.first_and_last(src).tolist():
            row, token = [self.bos_id], first
            while len(row) <= max_len:
                row.append(token)
                if token == self.eos_id:
                    break
                token = (
                    self.eos_id if token == last else self.symbols[(self.symbols.index(token) + 1) % len(self.symbols)]
                )
            rows.append(row)
        return rows


class _LogSoftmax(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, dim=-1)


@dataclass
class _Config:
    tgt_vocab: int


def expected_greedy(model: CountingModel, src: Tensor, max_len: int) -> Tensor:
    """The padded ``(batch, <= max_len + 1)`` output of correct greedy decoding with ``model``."""
    rows = model.translate(src, max_len)
    width = max(len(r) for r in rows)
    return torch.tensor([r + [model.pad_id] * (width - len(r)) for r in rows])


def _counting_source(rows: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    src = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    return src, (src != pad_id)[:, None, None, :]


def _run_greedy(
    greedy_decode: Any,
    model: nn.Module,
    src: Tensor,
    src_mask: Tensor,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    pad_id: int = 0,
) -> Tensor:
    out = greedy_decode(model, src, src_mask, max_len, bos_id, eos_id, pad_id)
    expect_type(out, Tensor, "the output")
    expect(
        out.dim() == 2 and out.size(0) == src.size(0),
        f"the output should have shape (batch={src.size(0)}, length), got {tuple(out.shape)}",
    )
    expect(not out.dtype.is_floating_point, f"the output should hold integer token ids, got dtype {out.dtype}")
    return out


def _compare_tokens(out: Tensor, expected: Tensor, eos_id: int, pad_id: int, max_len: int) -> None:
    """Token-by-token comparison whose message says where (and roughly how) the rows differ."""
    if out.size(1) > expected.size(1):
        extra = out[:, expected.size(1) :]
        if out.size(1) > max_len + 1:
            raise Mismatch(f"the output has {out.size(1)} columns: more than <bos> + max_len={max_len} tokens")
        if bool((extra == pad_id).all()):
            raise Mismatch(
                f"the output has {out.size(1)} columns, but every sentence had ended with <eos> after "
                f"{expected.size(1)}: decoding should stop once all sentences have finished"
            )
    width = min(out.size(1), expected.size(1))
    for b in range(out.size(0)):
        for t in range(width):
            if int(out[b, t]) != int(expected[b, t]):
                before = expected[b, :t]
                if bool((before == eos_id).any()):
                    raise Mismatch(
                        f"sentence {b} has token {int(out[b, t])} at position {t}, after its <eos>: "
                        f"a finished sentence should only get <pad> (id {pad_id})"
                    )
                raise Mismatch(f"sentence {b} differs from the expected tokens at position {t} (of {expected.size(1)})")
    if out.size(1) < expected.size(1):
        raise Mismatch(f"the output has {out.size(1)} columns, expected {expected.size(1)}: decoding stopped too early")
    if out.size(1) > expected.size(1):
        raise Mismatch(f"the output has {out.size(1)} columns, expected {expected.size(1)}")


@greedy.test("output: token ids (batch, length) starting with <bos>")
def _(greedy_decode: Any) -> None:
    model = CountingModel()
    src, src_mask = _counting_source([[4, 6], [9, 5, 3], [7]])
    out = _run_greedy(greedy_decode, model, src, src_mask, max_len=6)
    expect(
        bool((out[:, 0] == model.bos_id).all()), f"the first column of the output should be <bos> (id {model.bos_id})"
    )
    expect(out.size(1) <= 7, f"the output has {out.size(1)} columns: more than <bos> + max_len=6 tokens")


@greedy.test("each new token is fed back in (and <bos> starts every prefix)")
def _(greedy_decode: Any) -> None:
    model = CountingModel()
    src, src_mask = _counting_source([[3, 11], [5, 4], [8, 7]])  # long counts: nothing ends within max_len
    out = _run_greedy(greedy_decode, model, src, src_mask, max_len=5)
    bad = [tgt for tgt in model.decoded if not bool((tgt[:, 0] == model.bos_id).all())]
    expect(not bad, "the decoder was given a target prefix that does not start with <bos>")
    _compare_tokens(out, expected_greedy(model, src, 5), model.eos_id, model.pad_id, 5)


@greedy.test("stops at <eos>: finished sentences get <pad>, decoding ends when all are done", points=2)
def _(greedy_decode: Any) -> None:
    model = CountingModel()
    src, src_mask = _counting_source([[4, 6], [9, 9, 0], [10, 4], [6, 7]])  # <eos> after 4, 2, 5 and 3 tokens
    out = _run_greedy(greedy_decode, model, src, src_mask, max_len=10)
    _compare_tokens(out, expected_greedy(model, src, 10), model.eos_id, model.pad_id, 10)


@greedy.test("stops after max_len tokens")
def _(greedy_decode: Any) -> None:
    model = CountingModel()
    src, src_mask = _counting_source([[3, 11], [4, 3]])  # 9 tokens before <eos>
    out = _run_greedy(greedy_decode, model, src, src_mask, max_len=4)
    _compare_tokens(out, expected_greedy(model, src, 4), model.eos_id, model.pad_id, 4)


SRC_VOCAB, TGT_VOCAB = 11, 13


def small_transformer(seed: int = 9, dropout: float = 0.0, eos_bias: float = 2.0, sharpen: float = 3.0) -> Transformer:
    """A random 2-layer Transformer (ids: <pad> = 0, <bos> = 1, <eos> = 2) in eval mode. Its next-token choices
    are far from ties (scaled output layer), it never writes <pad> or <bos>, and a bias on <eos> makes its
    sentences end at different steps (with the default seed and max_len 10: after 5, 9, 7 and 3 tokens, and
    one sentence that does not end)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make_model(SRC_VOCAB, TGT_VOCAB, N=2, d_model=16, d_ff=32, h=4, dropout=dropout, max_len=64)
    with torch.no_grad():
        model.generator.proj.weight.mul_(sharpen)
        model.generator.proj.bias[2] += eos_bias
        model.generator.proj.bias[:2] -= 10.0  # never <pad> or <bos>
    return model.eval()


GREEDY_LENGTHS, GREEDY_MAX_LEN = [6, 2, 4, 5, 3], 10  # the source batch of the Transformer tests, and max_len


def padded_source(lengths: list[int], seed: int, vocab: int = SRC_VOCAB) -> tuple[Tensor, Tensor]:
    """Random source ids ``(batch, max(lengths))`` padded with 0 after ``lengths[b]`` tokens, and their mask."""
    src = _tokens(lengths, max(lengths), pad_id=0, seed=seed, vocab=vocab)
    return src, (src != 0)[:, None, None, :]


@greedy.test("the source mask reaches encoder and decoder, the causal mask the decoder")
def _(greedy_decode: Any) -> None:
    model = small_transformer()
    src, src_mask = padded_source(GREEDY_LENGTHS, seed=8)
    encoder_calls, h1 = _calls(model.encoder)
    decoder_calls, h2 = _calls(model.decoder)
    try:
        _run_greedy(greedy_decode, model, src, src_mask, GREEDY_MAX_LEN)
    finally:
        h1.remove()
        h2.remove()
    expect(bool(encoder_calls) and bool(decoder_calls), "the model's encoder and decoder were not both used")
    for call in encoder_calls:
        expect(call.get("src_mask") is not None, "the encoder was run without the source mask: it attends to <pad>")
    for call in decoder_calls:
        expect(
            call.get("memory_mask") is not None,
            "the decoder was run without the source mask: cross-attention attends to the source's <pad>",
        )
        length = call["x"].size(1) if isinstance(call.get("x"), Tensor) else 0
        if length > 1:
            mask = call.get("tgt_mask")
            expect(
                mask is not None,
                f"the decoder was run on {length} target positions without a target mask: "
                "earlier positions see later ones",
            )
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            leak = bool((mask.expand(*mask.shape[:-2], length, length) & future).any())
            expect(
                not leak, f"the target mask given to the decoder ({length} positions) lets a position see later ones"
            )


@greedy.test("matches the library's greedy_decode on a small Transformer", points=2)
def _(greedy_decode: Any) -> None:
    model = small_transformer()
    src, src_mask = padded_source(GREEDY_LENGTHS, seed=8)
    expected = greedy_decode_reference(model, src, src_mask, GREEDY_MAX_LEN)
    out = _run_greedy(greedy_decode, model, src, src_mask, GREEDY_MAX_LEN)
    _compare_tokens(out, expected, 2, 0, GREEDY_MAX_LEN)


def greedy_decode_reference(
    model: Transformer,
    src: Tensor,
    src_mask: Tensor | None,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    pad_id: int = 0,
) -> Tensor:
    """The library's greedy decoding (the oracle), with the model's mode restored."""
    return greedy_decode(model, src, src_mask, max_len, bos_id, eos_id, pad_id)
