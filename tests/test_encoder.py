"""Tests of transformer_lib.encoder (chapter 6).

Oracle: PyTorch's own nn.TransformerEncoderLayer / nn.TransformerEncoder with our weights copied in
(tests/oracle.py). Properties where PyTorch has no counterpart: the FFN formula written out, the FFN
working position by position, padding invariance, batch independence, no NaN for an all-pad row.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle import blocked, copy_encoder, copy_encoder_layer
from torch import nn

from transformer_lib.encoder import Encoder, EncoderLayer, PositionwiseFeedForward, SublayerConnection
from transformer_lib.masks import padding_mask

# float32, a handful of layers of width 32: the two implementations sum in different orders
# (packed vs separate projections, fused kernels), which moves results by ~1e-6; 1e-5 still
# catches any real difference (a missing residual, a misplaced norm, a wrong mask).
ATOL = 1e-5
RTOL = 1e-5

D_MODEL, HEADS, D_FF, PAD = 32, 4, 64, 0


def _tokens() -> torch.Tensor:
    """Three sentences of lengths 5, 3 and 2, padded with PAD to length 5."""
    return torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, PAD, PAD], [3, 4, PAD, PAD, PAD]])


def _torch_layer(norm_first: bool) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        D_MODEL, HEADS, D_FF, dropout=0.0, activation="relu", batch_first=True, norm_first=norm_first
    )


def _run(module: nn.Module, train: bool, *args, **kwargs) -> torch.Tensor:
    """Training mode with grad, or eval mode under no_grad (where PyTorch takes its fused fast path)."""
    module.train(train)
    if train:
        return module(*args, **kwargs)
    with torch.no_grad():
        return module(*args, **kwargs)


# --- oracle: nn.TransformerEncoderLayer -------------------------------------------------------


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval-fastpath"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padding-mask"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_layer_matches_torch(norm_first: bool, masked: bool, train: bool) -> None:
    ref = _torch_layer(norm_first)
    ours = EncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=norm_first)
    copy_encoder_layer(ours, ref)
    tokens = _tokens()
    x = torch.randn(*tokens.shape, D_MODEL)
    mask = padding_mask(tokens, PAD) if masked else None  # ours: (batch, 1, 1, len), True = may attend
    key_padding = blocked(tokens != PAD) if masked else None  # PyTorch: (batch, len), True = blocked
    expected = _run(ref, train, x, src_key_padding_mask=key_padding)
    actual = _run(ours, train, x, mask)
    assert actual.shape == x.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


# --- oracle: nn.TransformerEncoder --------------------------------------------------------------


@pytest.mark.parametrize("final_norm", [False, True], ids=["no-final-norm", "final-norm"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padding-mask"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_matches_torch(norm_first: bool, masked: bool, final_norm: bool) -> None:
    # enable_nested_tensor=False: in eval mode PyTorch would otherwise pack the padded batch into a
    # nested tensor and return exact zeros at the pad positions, while our encoder (like the paper)
    # still computes vectors there. Without nesting the two agree at EVERY position, pads included;
    # the nested path is checked on the real tokens in the next test.
    ref = nn.TransformerEncoder(
        _torch_layer(norm_first),
        num_layers=2,
        norm=nn.LayerNorm(D_MODEL) if final_norm else None,
        enable_nested_tensor=False,
    )
    ours = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0, norm_first=norm_first, final_norm=final_norm)
    copy_encoder(ours, ref)
    tokens = _tokens()
    x = torch.randn(*tokens.shape, D_MODEL)
    mask = padding_mask(tokens, PAD) if masked else None
    key_padding = blocked(tokens != PAD) if masked else None
    for train in (True, False):
        expected = _run(ref, train, x, src_key_padding_mask=key_padding)
        actual = _run(ours, train, x, mask)
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # PyTorch's prototype notice
def test_encoder_matches_torch_nested_fast_path_on_real_tokens() -> None:
    # With the default enable_nested_tensor=True, an eval-mode post-LN nn.TransformerEncoder drops
    # the pad positions and returns zeros there; so compare the real (non-pad) tokens only.
    ref = nn.TransformerEncoder(_torch_layer(norm_first=False), num_layers=2, enable_nested_tensor=True)
    ours = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0, norm_first=False)
    copy_encoder(ours, ref)
    tokens = _tokens()
    real = tokens != PAD  # (batch, len)
    x = torch.randn(*tokens.shape, D_MODEL)
    expected = _run(ref, False, x, src_key_padding_mask=blocked(real))
    actual = _run(ours, False, x, padding_mask(tokens, PAD))
    torch.testing.assert_close(actual[real], expected[real], atol=ATOL, rtol=RTOL)
    # why only the real tokens: PyTorch's nested path returns zeros at the pads, ours computes vectors there
    assert torch.all(expected[~real] == 0), "PyTorch's nested fast path no longer zeroes the pads"
    assert actual[~real].abs().sum() > 0


def test_final_norm_defaults_to_norm_first() -> None:
    assert isinstance(Encoder(D_MODEL, HEADS, D_FF, N=1, norm_first=False).norm, nn.Identity)
    assert isinstance(Encoder(D_MODEL, HEADS, D_FF, N=1, norm_first=True).norm, nn.LayerNorm)
    assert isinstance(Encoder(D_MODEL, HEADS, D_FF, N=1, norm_first=False, final_norm=True).norm, nn.LayerNorm)
    assert isinstance(Encoder(D_MODEL, HEADS, D_FF, N=1, norm_first=True, final_norm=False).norm, nn.Identity)


def test_final_norm_output_is_normalised() -> None:
    enc = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0, norm_first=True).eval()
    out = enc(torch.randn(2, 5, D_MODEL) * 10)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


# --- Add & Norm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_sublayer_connection_formula(norm_first: bool) -> None:
    block = SublayerConnection(D_MODEL, dropout=0.0, norm_first=norm_first)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, D_MODEL)

    def sublayer(y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2 * y + 1)

    def norm(y: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(y, (D_MODEL,), block.norm.weight, block.norm.bias, block.norm.eps)

    expected = x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))
    torch.testing.assert_close(block(x, sublayer), expected, atol=ATOL, rtol=RTOL)


# --- the feed-forward network -----------------------------------------------------------------------


def test_ffn_is_the_papers_formula() -> None:
    ffn = PositionwiseFeedForward(D_MODEL, D_FF, dropout=0.0)
    x = torch.randn(2, 7, D_MODEL)
    W1, b1 = ffn.w_1.weight.T, ffn.w_1.bias  # (d_model, d_ff), (d_ff,): nn.Linear stores W transposed
    W2, b2 = ffn.w_2.weight.T, ffn.w_2.bias  # (d_ff, d_model), (d_model,)
    assert W1.shape == (D_MODEL, D_FF) and W2.shape == (D_FF, D_MODEL)
    expected = torch.maximum(torch.zeros(()), x @ W1 + b1) @ W2 + b2  # max(0, x W1 + b1) W2 + b2
    actual = ffn(x)
    assert actual.shape == x.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def test_ffn_is_position_wise() -> None:
    ffn = PositionwiseFeedForward(D_MODEL, D_FF, dropout=0.0)
    x = torch.randn(3, 6, D_MODEL)
    perm = torch.randperm(6)
    torch.testing.assert_close(ffn(x[:, perm]), ffn(x)[:, perm], atol=ATOL, rtol=RTOL)
    # and one position alone gives the same vector as inside its sentence
    torch.testing.assert_close(ffn(x[1:2, 4:5]), ffn(x)[1:2, 4:5], atol=ATOL, rtol=RTOL)


# --- properties of the encoder ---------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_pad_vectors_do_not_change_real_outputs(norm_first: bool) -> None:
    enc = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0, norm_first=norm_first).eval()
    tokens = _tokens()
    real = tokens != PAD  # (batch, len)
    mask = padding_mask(tokens, PAD)
    x = torch.randn(*tokens.shape, D_MODEL)
    x_other_pads = torch.where(real[..., None], x, 100 * torch.randn_like(x))  # new vectors at the pads only
    out, out_other = enc(x, mask), enc(x_other_pads, mask)
    torch.testing.assert_close(out[real], out_other[real], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(out[~real], out_other[~real])  # the pads themselves did change


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_padded_batch_equals_each_sentence_alone(norm_first: bool) -> None:
    enc = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0, norm_first=norm_first).eval()
    tokens = _tokens()
    x = torch.randn(*tokens.shape, D_MODEL)
    out = enc(x, padding_mask(tokens, PAD))  # (batch, len, d_model)
    for i, length in enumerate((tokens != PAD).sum(1).tolist()):
        alone = enc(x[i : i + 1, :length])  # no padding, no mask, no batch-mates
        torch.testing.assert_close(out[i : i + 1, :length], alone, atol=ATOL, rtol=RTOL)


def test_fully_padded_sequence_gives_no_nan() -> None:
    enc = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0).eval()
    tokens = torch.tensor([[5, 6, 7, PAD], [PAD, PAD, PAD, PAD]])  # the second row is all padding
    x = torch.randn(2, 4, D_MODEL)
    out = enc(x, padding_mask(tokens, PAD))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :3], enc(x[:1, :3])[0], atol=ATOL, rtol=RTOL)  # row 0 unaffected


def test_encoder_without_positions_is_permutation_equivariant() -> None:
    # Attention and FFN ignore order; only the positional encoding (chapter 3) tells positions apart.
    enc = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0).eval()
    x = torch.randn(2, 6, D_MODEL)
    perm = torch.randperm(6)
    torch.testing.assert_close(enc(x[:, perm]), enc(x)[:, perm], atol=ATOL, rtol=RTOL)


def test_dropout_is_active_in_training_only() -> None:
    layer = EncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.5)
    x = torch.randn(2, 5, D_MODEL)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), atol=0, rtol=0)


def test_every_parameter_gets_a_gradient() -> None:
    enc = Encoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0, norm_first=True)
    tokens = _tokens()
    enc(torch.randn(*tokens.shape, D_MODEL), padding_mask(tokens, PAD)).pow(2).sum().backward()
    missing = [name for name, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_paper_sizes_parameter_count() -> None:
    d, d_ff, N = 512, 2048, 6
    enc = Encoder(d, 8, d_ff, N=N)
    attention = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O with biases
    ffn = d * d_ff + d_ff + d_ff * d + d  # W1, b1, W2, b2
    norms = 2 * 2 * d  # two LayerNorms (gain and bias) per layer
    assert sum(p.numel() for p in enc.parameters()) == N * (attention + ffn + norms)


# --- bad configurations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"N": 0}, r"N must be a positive integer, got 0"),
        ({"N": 2.5}, r"N must be a positive integer, got 2.5"),
        ({"d_model": 30, "num_heads": 4}, r"d_model=30 must be divisible by num_heads=4"),
        ({"num_heads": 0}, r"num_heads must be a positive integer, got 0"),
        ({"d_model": -8}, r"d_model must be a positive integer, got -8"),
        ({"d_ff": 0}, r"d_ff must be a positive integer, got 0"),
        ({"d_ff": -1}, r"d_ff must be a positive integer, got -1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
    ],
)
def test_encoder_rejects_bad_config(kwargs: dict, message: str) -> None:
    config = {"d_model": D_MODEL, "num_heads": HEADS, "d_ff": D_FF, "N": 2, "dropout": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        Encoder(**config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 30, "num_heads": 4}, r"d_model=30 must be divisible by num_heads=4"),
        ({"d_ff": 0}, r"d_ff must be a positive integer, got 0"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_encoder_layer_rejects_bad_config(kwargs: dict, message: str) -> None:
    config = {"d_model": D_MODEL, "num_heads": HEADS, "d_ff": D_FF, "dropout": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        EncoderLayer(**config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_ff": 0}, r"d_ff must be a positive integer, got 0"),
        ({"d_model": 0}, r"d_model must be a positive integer, got 0"),
        ({"dropout": -0.5}, r"dropout must be in \[0, 1\), got -0.5"),
    ],
)
def test_ffn_rejects_bad_config(kwargs: dict, message: str) -> None:
    config = {"d_model": D_MODEL, "d_ff": D_FF, "dropout": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        PositionwiseFeedForward(**config)
