"""Chapter 1 exercises — why attention.

* ``01.layers_needed`` — how many layers of each kind until the last output sees the first input (the
  maximum path length of the paper's Table 1, as the chapter measures it) (``layers_needed``);
* ``01.additive_scores`` — Bahdanau's score ``e_j = vᵀ tanh(W s + U h_j)`` for every source position
  (``additive_scores``);
* ``01.additive_attention`` — the whole additive-attention module: scores, masked softmax over the source,
  context vector (``AdditiveAttention``).

Oracles: for the layer counts, a simulation of each stack's wiring (which input the last output reaches after
each layer), independent of the closed formulas; for the score, the formula written out with the same
``nn.Linear`` layers; for the module, the library's ``transformer_lib.rnn.AdditiveAttention`` with the
learner's weights copied in.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn

from ..rnn import AdditiveAttention as _ReferenceAdditive
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register

# float32 through one tanh layer of width <= 32: only the order of the sums differs from the oracle (~1e-7);
# a swapped projection, a lost tanh or a leaking mask moves values by >= 1e-2.
ATOL, RTOL = 1e-5, 1e-4


# --------------------------------------------------------------------------- helpers


def randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    """Seeded standard-normal tensor of ``shape`` (times ``scale``), from a private generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def length_mask(lengths: list[int], size: int) -> Tensor:
    """``(batch, size)`` bool: True on the first ``lengths[b]`` positions of row ``b`` (the rest is padding)."""
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> None:
    """Give every parameter seeded values uniform in [-0.5, 0.5), so that no bias is zero."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.rand(p.shape, generator=g) - 0.5)


def matches(a: Any, b: Tensor, atol: float = 1e-4) -> bool:
    """True when ``a`` is a tensor of ``b``'s shape equal to it within ``atol`` (to name a known slip)."""
    return isinstance(a, Tensor) and a.shape == b.shape and bool(((a.detach() - b).abs() <= atol).all())


def build(cls: Any, *args: Any) -> nn.Module:
    """Instantiate the learner's class; it must be a class whose instances are ``nn.Module`` s."""
    if not isinstance(cls, type):
        raise Mismatch(f"check() needs your class itself, got {type(cls).__name__}")
    module = cls(*args)
    expect(isinstance(module, nn.Module), f"{cls.__name__} should be a subclass of nn.Module")
    return module


def attribute(module: Any, name: str, types: type, what: str) -> Any:
    """``module.name``, which must exist and be an instance of ``types`` (else a Mismatch naming it)."""
    expect(hasattr(module, name), f"{what} has no attribute `{name}`: keep the names the task gives")
    value = getattr(module, name)
    expect_type(value, types, f"`{name}`")
    return value


# --------------------------------------------------------------------------- 01.layers_needed

layers = register(
    Exercise("01.layers_needed", "How many layers until the last output sees the first input?", "layers_needed")
)

KINDS = ("recurrent", "convolution", "dilated", "self-attention")


def _lowest_seen(kind: str, n: int, k: int, depth: int) -> int:
    """The earliest input (1-based) that output ``n`` depends on after ``depth`` layers of ``kind``.

    The wiring of the chapter's stacks: a recurrent sweep reads x_t and the previous sweep's h_{t-1} (the first
    sweep starts from h = 0); a causal convolution of layer ℓ reads k inputs ``dilation`` apart, with dilation
    1 (contiguous) or k^ℓ (dilated, ℓ = 0, 1, ...); self-attention reads every position.
    """
    lowest = n
    for layer in range(depth):
        if lowest <= 1:  # input 1 is reached: more layers change nothing (and a huge depth costs no time)
            break
        if kind == "recurrent":
            lowest -= 1 if layer > 0 else 0  # sweep 1 sees x_n only; every later sweep one position more
        elif kind == "convolution":
            lowest -= k - 1
        elif kind == "dilated":
            lowest -= (k - 1) * k**layer
        else:
            lowest = 1
    return max(lowest, 1)


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def _count(layers_needed: Any, kind: str, n: int, k: int) -> int:
    value = layers_needed(kind, n, k)
    expect(
        isinstance(value, Integral) and not isinstance(value, bool),
        f"layers_needed({kind!r}, {n}, {k}) should return an int (a number of layers), got {type(value).__name__}",
    )
    return int(value)


def _expect_counts(layers_needed: Any, kind: str, cases: list[tuple[int, int]]) -> None:
    """For each (n, k): the answer is the fewest layers that reach input 1 — says 'too few' or 'too many'."""
    for n, k in cases:
        answer = _count(layers_needed, kind, n, k)
        where = f"{kind}, n = {n}" + (f", k = {k}" if kind in ("convolution", "dilated") else "")
        expect(answer >= 1, f"{where}: your answer is {answer}, but a stack has at least one layer")
        expect(answer <= n, f"{where}: your answer {answer} is too many (n layers of any kind always reach input 1)")
        expect(
            _lowest_seen(kind, n, k, answer) == 1,
            f"{where}: after {_layers(answer)} (your answer) output {n} does not see input 1 yet — too few",
        )
        expect(
            answer == 1 or _lowest_seen(kind, n, k, answer - 1) > 1,
            f"{where}: output {n} already sees input 1 after {_layers(answer - 1)} — your answer {answer} is too many",
        )


@layers.test("returns an int for every kind of layer")
def _(layers_needed: Any) -> None:
    for kind in KINDS:
        _count(layers_needed, kind, 9, 3)


@layers.test("recurrent: one sweep per position")
def _(layers_needed: Any) -> None:
    _expect_counts(layers_needed, "recurrent", [(2, 3), (8, 3), (16, 3), (33, 5)])


@layers.test("self-attention: one layer at every length")
def _(layers_needed: Any) -> None:
    _expect_counts(layers_needed, "self-attention", [(2, 3), (8, 3), (64, 3), (1000, 5)])


@layers.test("contiguous convolution: each layer reaches k - 1 positions further back", points=2)
def _(layers_needed: Any) -> None:
    cases = [(8, 3), (9, 3), (16, 3), (2, 3), (5, 4), (7, 4), (10, 4), (11, 2), (17, 5), (30, 7)]
    _expect_counts(layers_needed, "convolution", cases)


@layers.test("dilated convolution: the receptive field grows k-fold per layer", points=2)
def _(layers_needed: Any) -> None:
    cases = [(8, 3), (9, 3), (10, 3), (27, 3), (28, 3), (2, 2), (16, 2), (17, 2), (125, 5), (126, 5), (2, 7)]
    _expect_counts(layers_needed, "dilated", cases)


@layers.test("an unknown kind of layer raises ValueError")
def _(layers_needed: Any) -> None:
    try:
        value = layers_needed("lstm", 8, 3)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 — through the grader's pipe, the learner's error has a `kind`
        kind = getattr(exc, "kind", type(exc).__name__)
        expect(kind == "ValueError", f"layers_needed('lstm', 8, 3) raised {kind}; raise a ValueError instead")
    else:
        raise Mismatch(f"layers_needed('lstm', 8, 3) returned {value!r}: an unknown kind should raise ValueError")


# --------------------------------------------------------------------------- 01.additive_scores

scores = register(Exercise("01.additive_scores", "The additive score vᵀ tanh(W s + U h_j)", "additive_scores"))


def score_layers(hidden: int, seed: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """Seeded ``W`` (no bias), ``U`` (with a bias) and ``v`` (hidden -> 1, no bias), as ``AdditiveAttention`` has."""
    with torch.random.fork_rng():  # the default initialisation draws from the global generator: leave it alone
        W, U, v = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden), nn.Linear(hidden, 1, bias=False)
    for i, layer in enumerate((W, U, v)):
        randomise(layer, 1000 * seed + i)  # uniform in [-0.5, 0.5), different for W and U; U's bias not small
        layer.requires_grad_(False)  # the tests differentiate with respect to the query and the keys only
    return W, U, v


def additive_scores_reference(query: Tensor, keys: Tensor, W: nn.Module, U: nn.Module, v: nn.Module) -> Tensor:
    """The oracle: ``e_j = vᵀ tanh(W s + U h_j)`` for every row and source position -> ``(batch, src_len)``."""
    energy = torch.tanh(W(query).unsqueeze(1) + U(keys))  # (batch, src_len, hidden)
    return v(energy).squeeze(-1)  # (batch, src_len)


def _scores_hint(actual: Tensor, query: Tensor, keys: Tensor, W: nn.Module, U: nn.Module, v: nn.Module) -> str:
    """Name the known slip that ``actual`` equals (or '')."""
    with torch.no_grad():
        candidates = {
            "W and U are swapped: W projects the decoder state s, U the encoder states h_j": v(
                torch.tanh(U(query).unsqueeze(1) + W(keys))
            ).squeeze(-1),
            "the tanh is missing": v(W(query).unsqueeze(1) + U(keys)).squeeze(-1),
            "the tanh is applied after v, not to W s + U h_j": torch.tanh(
                v(W(query).unsqueeze(1) + U(keys)).squeeze(-1)
            ),
            "the features are summed instead of weighted by v": torch.tanh(W(query).unsqueeze(1) + U(keys)).sum(-1),
        }
    for message, value in candidates.items():
        if matches(actual, value, atol=1e-4):
            return message
    return ""


def _call_scores(f: Any, query: Tensor, keys: Tensor, layers: tuple[nn.Module, ...]) -> Tensor:
    out = f(query, keys, *layers)
    expect_type(out, Tensor, "the scores")
    expect_shape(out, (query.size(0), keys.size(1)), "the scores (batch, src_len)")
    return out


def compare_scores(f: Any, batch: int, src_len: int, hidden: int, seed: int) -> None:
    """Scores of random inputs against the oracle, with a hint when they equal a known slip."""
    layers = score_layers(hidden, seed)
    query, keys = randn(batch, hidden, seed=seed + 1), randn(batch, src_len, hidden, seed=seed + 2)
    out = _call_scores(f, query, keys, layers)
    expected = additive_scores_reference(query, keys, *layers)
    hint = _scores_hint(out, query, keys, *layers)
    what = f"the scores for batch {batch}, src_len {src_len}, hidden {hidden}"
    expect_close(out, expected, what, ATOL, RTOL, hint=hint)


@scores.test("returns (batch, src_len): one score per source position")
def _(f: Any) -> None:
    layers = score_layers(4, seed=1)
    _call_scores(f, randn(2, 4, seed=2), randn(2, 5, 4, seed=3), layers)


@scores.test("values match vᵀ tanh(W s + U h_j)", points=2)
def _(f: Any) -> None:
    compare_scores(f, batch=2, src_len=5, hidden=4, seed=10)


@scores.test("row b's query is compared with row b's encoder states (batch = src_len)")
def _(f: Any) -> None:
    # With batch == src_len, `W(query) + U(keys)` without `unsqueeze(1)` broadcasts without an error, but adds
    # the query of row j to position j of every row.
    compare_scores(f, batch=4, src_len=4, hidden=6, seed=20)
    layers = score_layers(6, seed=21)
    query, keys = randn(4, 6, seed=22), randn(4, 4, 6, seed=23)
    out = _call_scores(f, query, keys, layers)
    other = query.clone()
    other[1:] = randn(3, 6, seed=24)  # only the queries of rows 1..3 change
    expect_close(
        _call_scores(f, other, keys, layers)[0],
        out[0],
        "row 0's scores after changing only the other rows' queries",
        ATOL,
        RTOL,
        hint="row 0's scores must depend on row 0's query only",
    )


@scores.test("gradients reach the query and the keys")
def _(f: Any) -> None:
    layers = score_layers(5, seed=30)
    mine = [randn(3, 5, seed=31).requires_grad_(), randn(3, 4, 5, seed=32).requires_grad_()]
    ref = [t.detach().clone().requires_grad_() for t in mine]
    upstream = randn(3, 4, seed=33)  # a random gradient flowing into the scores
    out = _call_scores(f, *mine, layers)
    expect(out.requires_grad, "the scores do not depend on the inputs through autograd (detached?)")
    (out * upstream).sum().backward()
    (additive_scores_reference(*ref, *layers) * upstream).sum().backward()
    for name, a, b in zip(("the query", "the keys"), mine, ref):
        expect(a.grad is not None, f"no gradient reaches {name} (is it detached, or rebuilt from numbers?)")
        expect_close(a.grad, b.grad, f"the gradient with respect to {name}", ATOL, RTOL)


# --------------------------------------------------------------------------- 01.additive_attention

additive = register(Exercise("01.additive_attention", "Additive (Bahdanau) attention", "AdditiveAttention"))


def build_additive(cls: Any, hidden: int, seed: int) -> nn.Module:
    """The learner's module with seeded random weights (uniform in [-0.5, 0.5))."""
    module = build(cls, hidden)
    what = f"{getattr(cls, '__name__', 'AdditiveAttention')}({hidden})"
    for name in ("W", "U", "v"):
        attribute(module, name, nn.Linear, what)
    randomise(module, seed)
    return module


@torch.no_grad()
def reference_of(module: nn.Module, hidden: int) -> _ReferenceAdditive:
    """The library's ``AdditiveAttention`` with the learner's weights copied in."""
    expect(module.W.bias is None, "W has a bias: the chapter's W s has none (nn.Linear(..., bias=False))")
    expect(module.U.bias is not None, "U has no bias: the chapter's U h_j has one (nn.Linear(hidden, hidden))")
    expect(module.v.bias is None, "v has a bias: the score is vᵀ tanh(...) and nothing more (bias=False)")
    ref = _ReferenceAdditive(hidden)
    ref.W.weight.copy_(module.W.weight)
    ref.U.weight.copy_(module.U.weight)
    ref.U.bias.copy_(module.U.bias)
    ref.v.weight.copy_(module.v.weight)
    return ref


def call_additive(module: nn.Module, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``module(query, keys[, mask])``, which must return ``(context (batch, hidden), weights (batch, src_len))``."""
    out = module(query, keys) if mask is None else module(query, keys, mask)
    expect(
        isinstance(out, (tuple, list)) and len(out) == 2,
        f"forward should return a pair (context, weights), got {type(out).__name__}"
        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""),
    )
    context, weights = out
    batch, src_len, hidden = keys.shape
    expect_shape(weights, (batch, src_len), "the weights (batch, src_len)")
    expect_shape(context, (batch, hidden), "the context (batch, hidden)")
    return context, weights


def expect_rows_sum_to_one(weights: Tensor, what: str = "the weights") -> None:
    """Every row of ``weights`` (batch, src_len) is a distribution over the source positions."""
    sums = weights.detach().double().sum(-1)
    expect(bool(torch.isfinite(sums).all()), f"{what} contain NaN or inf")
    worst = float((sums - 1).abs().max())
    expect(worst < 1e-4, f"the rows of {what} do not sum to 1 (off by up to {worst:.3g}): normalise over the source")


def expect_no_leak(weights: Tensor, mask: Tensor) -> None:
    """Positions the mask hides (False) get weight exactly 0."""
    leaked = weights.detach().masked_fill(mask, 0.0).abs()
    if float(leaked.max()) > 0:
        b, j = (int(i) for i in (leaked == leaked.max()).nonzero()[0])
        raise Mismatch(
            f"mask leak: row {b} gives weight {float(leaked[b, j]):.2g} to source position {j}, which the mask "
            "hides; hidden positions must get exactly zero weight"
        )


def compare_additive(
    cls: Any, batch: int, src_len: int, hidden: int, seed: int, lengths: list[int] | None = None
) -> None:
    """Context and weights of random inputs against the library's module with the same weights."""
    module = build_additive(cls, hidden, seed)
    ref = reference_of(module, hidden)
    query, keys = randn(batch, hidden, seed=seed + 1), randn(batch, src_len, hidden, seed=seed + 2)
    mask = None if lengths is None else length_mask(lengths, src_len)
    context, weights = call_additive(module, query, keys, mask)
    with torch.no_grad():
        ref_context, ref_weights = ref(query, keys, mask)
    where = f"batch {batch}, src_len {src_len}, hidden {hidden}" + ("" if mask is None else f", lengths {lengths}")
    if mask is not None:
        expect_no_leak(weights, mask)
    expect_rows_sum_to_one(weights)
    expect_close(weights, ref_weights, f"the weights ({where})", ATOL, RTOL)
    expect_close(
        context,
        ref_context,
        f"the context ({where})",
        ATOL,
        RTOL,
        hint="the weights are right, so look at what they average: the encoder states h_j themselves",
    )


@additive.test("has W (no bias), U (with a bias) and v (hidden → 1, no bias)")
def _(cls: Any) -> None:
    module = build(cls, 6)
    for name, out_features, bias in (("W", 6, False), ("U", 6, True), ("v", 1, False)):
        layer = attribute(module, name, nn.Linear, "AdditiveAttention(6)")
        expect_shape(layer.weight, (out_features, 6), f"{name}.weight (out_features, in_features)")
        has = "has a bias" if bias is False else "has no bias"
        expect((layer.bias is not None) == bias, f"{name} {has}; the task says {name} is nn.Linear(..., bias={bias})")


@additive.test("returns (context, weights); each row of weights sums to 1")
def _(cls: Any) -> None:
    module = build_additive(cls, 4, seed=40)
    _, weights = call_additive(module, randn(3, 4, seed=41), randn(3, 5, 4, seed=42))
    expect(bool((weights.detach() >= 0).all()), "some weights are negative: weights come from a softmax")
    expect_rows_sum_to_one(weights)


@additive.test("weights and context match the chapter's formulas (no mask)", points=2)
def _(cls: Any) -> None:
    compare_additive(cls, batch=3, src_len=5, hidden=4, seed=50)
    compare_additive(cls, batch=4, src_len=4, hidden=4, seed=51)  # square on purpose: shapes cannot tell


@additive.test("padding positions get zero weight; the others share 1", points=2)
def _(cls: Any) -> None:
    compare_additive(cls, batch=3, src_len=6, hidden=5, seed=60, lengths=[6, 2, 4])


@additive.test("the context ignores what the padded positions hold")
def _(cls: Any) -> None:
    module = build_additive(cls, 5, seed=70)
    mask = length_mask([3, 5, 1], 5)
    query, keys = randn(3, 5, seed=71), randn(3, 5, 5, seed=72)
    context, _ = call_additive(module, query, keys, mask)
    other = torch.where(mask[..., None], keys, randn(3, 5, 5, seed=73, scale=3.0))  # new values at padding only
    expect_close(
        call_additive(module, query, other, mask)[0],
        context,
        "the context after changing only the padded encoder states",
        ATOL,
        RTOL,
        hint="padded positions must not change the scores, the weights or the average",
    )


@additive.test("gradients reach W, U, v, the query and the keys")
def _(cls: Any) -> None:
    module = build_additive(cls, 4, seed=80)
    ref = reference_of(module, 4)
    mask = length_mask([5, 3], 5)
    mine = [randn(2, 4, seed=81).requires_grad_(), randn(2, 5, 4, seed=82).requires_grad_()]
    theirs = [t.detach().clone().requires_grad_() for t in mine]
    up_context, up_weights = randn(2, 4, seed=83), randn(2, 5, seed=84)  # random gradients flowing in
    context, weights = call_additive(module, *mine, mask)
    expect(context.requires_grad, "the context does not depend on the inputs through autograd (detached?)")
    ((context * up_context).sum() + (weights * up_weights).sum()).backward()
    ref_context, ref_weights = ref(*theirs, mask)
    ((ref_context * up_context).sum() + (ref_weights * up_weights).sum()).backward()
    for name, p in module.named_parameters():
        expect(p.grad is not None, f"no gradient reached `{name}`: is it used (and not detached)?")
    for name in ("W.weight", "U.weight", "U.bias", "v.weight"):
        ours, expected = module.get_parameter(name).grad, ref.get_parameter(name).grad
        expect_close(ours, expected, f"the gradient of {name}", ATOL, RTOL)
    for name, a, b in zip(("the query", "the keys"), mine, theirs):
        expect(a.grad is not None, f"no gradient reaches {name} (is it detached, or rebuilt from numbers?)")
        expect_close(a.grad, b.grad, f"the gradient with respect to {name}", ATOL, RTOL)
