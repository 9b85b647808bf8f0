"""The figures of chapters 5 and 6: split/merge heads as reshape + transpose, post-LN vs pre-LN wiring."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from transformer_lib.multihead import split_heads  # noqa: E402
from transformer_lib.viz import layer_norm_placement_figure, split_merge_heads_figure  # noqa: E402


def cell_labels(ax) -> list[str]:
    """The labels of a panel's cells, read row by row from the top (text positions are cell centres)."""
    texts = sorted(ax.texts, key=lambda t: (t.get_position()[1], t.get_position()[0]))
    return [t.get_text() for t in texts]


# ---------------------------------------------------------------------------------------------
# split_merge_heads_figure
# ---------------------------------------------------------------------------------------------


def test_split_figure_has_four_panels_with_every_cell() -> None:
    fig = split_merge_heads_figure(seq_len=3, d_model=8, num_heads=2)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert "d_model" in titles[0] and ".view" in titles[1] and ".transpose(1, 2)" in titles[2]
    assert "merge" in titles[3]
    for ax in fig.axes:
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == 3 * 8
        assert len(ax.texts) == 3 * 8


@pytest.mark.parametrize(("seq_len", "d_model", "num_heads"), [(3, 8, 2), (4, 12, 3), (2, 6, 1)])
def test_split_figure_matches_split_heads(seq_len: int, d_model: int, num_heads: int) -> None:
    """The transposed panel, read head by head and token by token, is split_heads of the feature indices."""
    fig = split_merge_heads_figure(seq_len, d_model, num_heads)
    features = torch.arange(d_model).expand(1, seq_len, d_model)  # (batch=1, seq, d_model): cell j holds j
    expected = split_heads(features, num_heads).flatten().tolist()  # (1, heads, seq, d_k) in memory order
    assert cell_labels(fig.axes[2]) == [str(f) for f in expected]
    assert cell_labels(fig.axes[0]) == cell_labels(fig.axes[3])  # merge gives x back
    assert cell_labels(fig.axes[1]) == cell_labels(fig.axes[0])  # the view moves nothing


def test_split_figure_rejects_indivisible_width() -> None:
    with pytest.raises(ValueError, match=r"d_model=10 is not divisible by num_heads=4"):
        split_merge_heads_figure(seq_len=3, d_model=10, num_heads=4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_heads": 0}, "num_heads"),
        ({"seq_len": -1}, "seq_len"),
        ({"d_model": 2.5}, "d_model"),
        ({"num_heads": True}, "num_heads"),
    ],
)
def test_split_figure_rejects_bad_sizes(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
        split_merge_heads_figure(**kwargs)


# ---------------------------------------------------------------------------------------------
# layer_norm_placement_figure
# ---------------------------------------------------------------------------------------------


def node_heights(ax) -> dict[str, float]:
    """Box label -> its height in the panel (the flow runs from the input at the bottom upwards)."""
    return {t.get_text(): t.get_position()[1] for t in ax.texts if t.get_text() in {"x", "Sublayer", "+", "LayerNorm"}}


def test_placement_figure_draws_both_wirings_side_by_side() -> None:
    fig = layer_norm_placement_figure()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    post, pre = fig.axes
    assert post.get_title().startswith("post-LN") and "LayerNorm(x + Sublayer(x))" in post.get_title()
    assert pre.get_title().startswith("pre-LN") and "x + Sublayer(LayerNorm(x))" in pre.get_title()
    h = node_heights(post)
    assert h["x"] < h["Sublayer"] < h["+"] < h["LayerNorm"]  # add, then normalise
    h = node_heights(pre)
    assert h["x"] < h["LayerNorm"] < h["Sublayer"] < h["+"]  # normalise the sub-layer's input only


def test_placement_figure_one_panel() -> None:
    fig = layer_norm_placement_figure(["pre-LN"])
    assert len(fig.axes) == 1 and fig.axes[0].get_title().startswith("pre-LN")


def test_placement_figure_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown placement\(s\) \['sandwich-LN'\]"):
        layer_norm_placement_figure(["post-LN", "sandwich-LN"])


@pytest.mark.parametrize("bad", ["post-LN", [], ()])
def test_placement_figure_rejects_a_string_or_nothing(bad) -> None:
    with pytest.raises(ValueError, match="placements must be a non-empty sequence"):
        layer_norm_placement_figure(bad)
