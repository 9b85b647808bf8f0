"""Chapter 14: RMSNorm, SwiGLU, rotary positions, grouped-query attention and ``ModernLM``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformer_lib.lm import LanguageModel, LMCache, LMConfig, causal_lm_loss, generate
from transformer_lib.modern import (
    REFINEMENTS,
    GroupedQueryAttention,
    ModernConfig,
    ModernLM,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    cache_bytes,
    rotary_angles,
    swiglu_hidden,
)
from transformer_lib.multihead import MultiHeadAttention
from transformer_lib.utils import BOS_ID

SMALL = dict(vocab_size=30, N=2, d_model=32, d_ff=64, h=4, dropout=0.0, max_len=40)


# --------------------------------------------------------------------------- RMSNorm


def test_rmsnorm_matches_its_formula_and_torch() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16) * 4 + 2
    expected = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * norm.weight
    torch.testing.assert_close(norm(x), expected)
    if hasattr(torch.nn, "RMSNorm"):  # torch >= 2.4 has one: the oracle
        oracle = torch.nn.RMSNorm(16, eps=1e-6)
        oracle.load_state_dict(norm.state_dict())
        torch.testing.assert_close(norm(x), oracle(x))


def test_rmsnorm_is_scale_invariant_but_keeps_the_mean_unlike_layernorm() -> None:
    torch.manual_seed(1)
    norm = RMSNorm(8)
    x = torch.randn(4, 8) + 3.0  # a large mean
    torch.testing.assert_close(norm(5.0 * x), norm(x), atol=1e-5, rtol=1e-5)  # scale-invariant, like LayerNorm
    assert norm(x).mean(-1).abs().min() > 0.5  # the mean survives (LayerNorm would remove it)
    assert F.layer_norm(x, (8,)).mean(-1).abs().max() < 1e-5
    rms = norm(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(4), atol=1e-4, rtol=0)


def test_rmsnorm_keeps_the_dtype_of_its_input() -> None:
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert RMSNorm(8)(x).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs", [dict(d_model=0), dict(d_model=8, eps=0.0), dict(d_model=8, eps=-1.0)])
def test_rmsnorm_rejects_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RMSNorm(**kwargs)


# --------------------------------------------------------------------------- SwiGLU


def test_swiglu_is_the_gated_formula_without_biases() -> None:
    torch.manual_seed(2)
    ffn = SwiGLU(8, 12, dropout=0.0)
    x = torch.randn(2, 3, 8)
    gate, value = x @ ffn.w_1.weight.T, x @ ffn.w_3.weight.T
    expected = (gate * torch.sigmoid(gate) * value) @ ffn.w_2.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert all(m.bias is None for m in (ffn.w_1, ffn.w_2, ffn.w_3))


@pytest.mark.parametrize("d_model, d_ff", [(128, 512), (256, 1024), (512, 2048)])
def test_swiglu_width_keeps_the_weights_of_the_relu_network(d_model: int, d_ff: int) -> None:
    from transformer_lib.encoder import PositionwiseFeedForward

    relu = sum(p.numel() for p in PositionwiseFeedForward(d_model, d_ff).parameters())
    hidden = swiglu_hidden(d_ff)
    swiglu = sum(p.numel() for p in SwiGLU(d_model, hidden).parameters())
    assert hidden % 8 == 0
    assert abs(swiglu - relu) / relu < 0.02  # within 2 % of the ReLU network's weights
    assert swiglu_hidden(512) == 344


def test_swiglu_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="d_hidden"):
        SwiGLU(8, 0)
    with pytest.raises(ValueError, match="d_ff"):
        swiglu_hidden(-4)


# --------------------------------------------------------------------------- RoPE


def _complex_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The oracle: pair (2i, 2i+1) as a complex number, multiplied by exp(i m theta_i)."""
    d = x.size(-1)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions[:, None].double() * theta)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * rot).flatten(-2).float()


def test_rope_is_a_rotation_of_each_feature_pair() -> None:
    torch.manual_seed(3)
    rope = RotaryEmbedding(d_k=8, max_len=20)
    x = torch.randn(2, 3, 6, 8)  # (batch, heads, len, d_k)
    torch.testing.assert_close(rope(x), _complex_rope(x, torch.arange(6)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope(x, start=7), _complex_rope(x, torch.arange(7, 13)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)  # lengths kept
    torch.testing.assert_close(rope(x[..., :1, :]), x[..., :1, :])  # position 0: no turn


def test_rope_scores_depend_only_on_the_distance() -> None:
    """The defining property: <R_m q, R_n k> is a function of m - n."""
    torch.manual_seed(4)
    rope = RotaryEmbedding(d_k=16, max_len=64)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        qm = rope(q.expand(1, 1, 64, 16))[0, 0, m]
        kn = rope(k.expand(1, 1, 64, 16))[0, 0, n]
        return float(qm @ kn)

    for m, n, shift in [(5, 2, 10), (0, 9, 30), (20, 20, 3)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)  # the distance itself does matter


def test_rotary_angles_use_chapter_3s_frequencies() -> None:
    angles = rotary_angles(10, 8)
    assert angles.shape == (10, 4)
    torch.testing.assert_close(angles[1], 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    torch.testing.assert_close(angles[7], 7 * angles[1])


def test_rope_rejects_odd_sizes_and_positions_past_its_table() -> None:
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(d_k=7, max_len=10)
    rope = RotaryEmbedding(d_k=8, max_len=10)
    with pytest.raises(ValueError, match="max_len=10"):
        rope(torch.randn(1, 1, 4, 8), start=8)
    with pytest.raises(ValueError, match="d_k=8"):
        rope(torch.randn(1, 1, 4, 6))


# --------------------------------------------------------------------------- grouped-query attention


def test_gqa_with_every_head_is_multi_head_attention() -> None:
    torch.manual_seed(5)
    mha = MultiHeadAttention(32, 4)
    gqa = GroupedQueryAttention(32, 4, kv_heads=4)
    gqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 7, 32)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(gqa(x, x, x, mask), mha(x, x, x, mask))


def test_multi_query_attention_shares_one_key_value_head() -> None:
    torch.manual_seed(6)
    gqa = GroupedQueryAttention(32, 4, kv_heads=1)
    assert gqa.W_K.weight.shape == (8, 32) and gqa.W_V.weight.shape == (8, 32)  # one head of d_k = 8
    x = torch.randn(2, 5, 32)
    out = gqa(x, x, x)
    # The oracle: one key/value head, copied to all four query heads, through PyTorch's attention.
    Q = gqa.W_Q(x).view(2, 5, 4, 8).transpose(1, 2)
    K = gqa.W_K(x).view(2, 5, 1, 8).transpose(1, 2).expand(2, 4, 5, 8)
    V = gqa.W_V(x).view(2, 5, 1, 8).transpose(1, 2).expand(2, 4, 5, 8)
    heads = F.scaled_dot_product_attention(Q, K, V)  # (2, 4, 5, 8)
    torch.testing.assert_close(out, gqa.W_O(heads.transpose(1, 2).reshape(2, 5, 32)), atol=1e-5, rtol=1e-5)


def test_grouped_query_heads_read_their_groups_key_value_head() -> None:
    torch.manual_seed(7)
    gqa = GroupedQueryAttention(32, 4, kv_heads=2)
    x = torch.randn(1, 6, 32)
    Q, K, V = gqa.project(x)
    assert Q.shape == (1, 4, 6, 8) and K.shape == V.shape == (1, 2, 6, 8)
    gqa(x, x, x)
    weights = gqa.attn_weights  # (1, 4, 6, 6)
    for head in range(4):
        kv = head // 2  # heads 0, 1 read kv head 0; heads 2, 3 read kv head 1
        expected = (Q[0, head] @ K[0, kv].T / 8**0.5).softmax(-1)
        torch.testing.assert_close(weights[0, head], expected, atol=1e-5, rtol=1e-5)


def test_gqa_rejects_groups_that_do_not_divide_and_cross_attention() -> None:
    with pytest.raises(ValueError, match="divisible by kv_heads=3"):
        GroupedQueryAttention(32, 4, kv_heads=3)
    with pytest.raises(ValueError, match="kv_heads"):
        GroupedQueryAttention(32, 4, kv_heads=0)
    gqa = GroupedQueryAttention(32, 4, kv_heads=2)
    x, memory = torch.randn(1, 3, 32), torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match="self-attention"):
        gqa(x, memory, memory)


# --------------------------------------------------------------------------- ModernLM


def test_modern_lm_with_every_switch_off_is_chapter_13s_model() -> None:
    torch.manual_seed(8)
    old = LanguageModel(LMConfig(**SMALL)).eval()
    new = ModernLM(ModernConfig(**SMALL)).eval()
    new.load_state_dict(old.state_dict())  # the same names and shapes
    tokens = torch.tensor([[BOS_ID, 5, 6, 7, 8, 9]])
    torch.testing.assert_close(new(tokens), old(tokens))


@pytest.mark.parametrize("name", list(REFINEMENTS))
def test_every_refinement_is_causal_and_generates_the_same_with_or_without_the_cache(name: str) -> None:
    torch.manual_seed(9)
    model = ModernLM(ModernConfig(**SMALL, **REFINEMENTS[name][1])).eval()
    a = torch.tensor([[BOS_ID, 5, 6, 7, 8, 9, 10]])
    b = a.clone()
    b[0, 4] = 12
    with torch.no_grad():
        change = (model(a) - model(b)).abs().amax(-1)[0]  # (len,)
    assert change[:4].max() < 1e-6 and change[4:].min() > 0  # no position sees the future
    prompt = torch.tensor([[BOS_ID, 5, 6], [BOS_ID, 7, 8]])
    cached = generate(model, prompt, 12, greedy=True, eos_id=None, use_cache=True)
    full = generate(model, prompt, 12, greedy=True, eos_id=None, use_cache=False)
    assert torch.equal(cached, full)
    cache = LMCache(SMALL["N"])
    with torch.no_grad():
        steps = torch.stack([model.next_token_logits(cache, a[:, t]) for t in range(a.size(1))], dim=1)
        torch.testing.assert_close(steps, model(a), atol=1e-5, rtol=1e-5)  # every cached step, not only the argmax


def test_each_switch_changes_the_module_it_names() -> None:
    base = ModernLM(ModernConfig(**SMALL))
    layer = base.blocks.layers[0]
    assert isinstance(layer.sublayer[0].norm, torch.nn.LayerNorm) and layer.self_attn.rope is None
    modern = ModernLM(ModernConfig(**SMALL, **REFINEMENTS["modern"][1]))
    layer = modern.blocks.layers[0]
    assert isinstance(layer.sublayer[0].norm, RMSNorm) and isinstance(modern.blocks.norm, RMSNorm)
    assert isinstance(layer.feed_forward, SwiGLU) and layer.self_attn.kv_heads == 2
    assert layer.self_attn.rope is not None and not hasattr(modern.pos, "pe")  # no table is added to the tokens
    assert base.head.weight is base.embed.lut.weight
    untied = ModernLM(ModernConfig(**SMALL, tie=False))
    assert untied.head.weight is not untied.embed.lut.weight
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(base) == SMALL["vocab_size"] * SMALL["d_model"]


def test_the_cache_of_grouped_query_attention_shrinks_by_heads_over_kv_heads() -> None:
    sizes = {}
    for kv in (4, 2, 1):
        model = ModernLM(ModernConfig(**SMALL, kv_heads=kv)).eval()
        cache = LMCache(SMALL["N"])
        with torch.no_grad():
            for t in range(10):
                model.next_token_logits(cache, torch.full((3,), 5 + t))
        sizes[kv] = cache_bytes(cache)
        d_k = SMALL["d_model"] // SMALL["h"]
        assert (
            sizes[kv] == 2 * SMALL["N"] * 3 * kv * 10 * d_k * 4
        )  # keys and values, layers, batch, heads, t, d_k, fp32
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1]


def test_modern_lm_trains() -> None:
    torch.manual_seed(10)
    model = ModernLM(ModernConfig(**SMALL, **REFINEMENTS["modern"][1]))
    batch = torch.randint(4, 30, (8, 12))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = causal_lm_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # it can memorise one batch


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(norm="batch"), "norm must be one of"),
        (dict(ffn="gelu"), "ffn must be one of"),
        (dict(positions="alibi"), "positions must be one of"),
        (dict(kv_heads=3), "divisible by kv_heads=3"),
        (dict(kv_heads=0), "kv_heads"),
        (dict(d_model=36, h=4, positions="rope"), "must be even"),
    ],
)
def test_modern_config_rejects_bad_switches(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModernConfig(**{**SMALL, **changes})


def test_the_ablation_script_runs_every_refinement_and_resumes(tmp_path, capsys) -> None:
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import modern_ablations

    out = tmp_path / "ablations.json"
    modern_ablations.main(["--quick", "--steps", "2", "--vocab", "200", "--out", str(out)])
    results = json.loads(out.read_text())
    runs = [(r["run"], r["seed"]) for r in results["rows"]]
    assert runs == [(name, 0) for name in REFINEMENTS] + [(name, 1) for name in modern_ablations.SECOND_SEED]
    assert results["quick"] is True and all(len(r["losses_every_10"]) == 1 for r in results["rows"])
    capsys.readouterr()
    modern_ablations.main(["--quick", "--steps", "2", "--vocab", "200", "--out", str(out)])  # nothing left to run
    assert "val ppl" not in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == results["rows"]
    with pytest.raises(SystemExit):
        modern_ablations.main(["--steps", "0", "--out", str(out)])
