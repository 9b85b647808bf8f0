"""The figures of chapters 1-3: how far a stack of layers reaches, the block picture of softmax(Q Kᵀ) V."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from transformer_lib.viz import attention_shapes_figure, receptive_field_figure  # noqa: E402


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# --------------------------------------------------------------------------- receptive fields


def conv_reach(n: int, k: int) -> np.ndarray:
    """Reach of a stack of causal convolutions: after l layers, output n sees the last 1 + l (k - 1) inputs."""
    layers = -(-(n - 1) // (k - 1))
    return np.array([[j >= n - 1 - (layer + 1) * (k - 1) for j in range(n)] for layer in range(layers)])


def test_receptive_field_draws_one_panel_per_stack_with_its_table() -> None:
    n = 16
    reach = {"convolution": conv_reach(n, 3), "self-attention": np.ones((1, n), dtype=bool)}
    fig = receptive_field_figure(reach)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax, table in zip(fig.axes, reach.values()):
        np.testing.assert_array_equal(ax.images[0].get_array(), table)  # row l = layer l + 1, column j = input j + 1
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["convolution: input 1 reached after 8 layers", "self-attention: input 1 reached after 1 layer"]
    assert "output 16" in fig.axes[-1].get_xlabel()


def test_receptive_field_accepts_tensors_and_says_when_input_1_is_never_reached() -> None:
    table = torch.zeros(2, 5, dtype=torch.bool)
    table[:, 3:] = True  # two layers that never reach input 1
    fig = receptive_field_figure({"too shallow": table})
    assert len(fig.axes) == 1 and fig.axes[0].get_title(loc="left") == "too shallow: input 1 not reached"


def test_receptive_field_panel_heights_follow_the_number_of_layers() -> None:
    fig = receptive_field_figure({"deep": np.ones((12, 8), dtype=bool), "shallow": np.ones((1, 8), dtype=bool)})
    deep, shallow = (ax.get_position().height for ax in fig.axes)
    assert deep > 2 * shallow


@pytest.mark.parametrize(
    ("reach", "message"),
    [
        ({}, "non-empty mapping"),
        ([np.ones((1, 4), dtype=bool)], "non-empty mapping"),
        ({"flat": np.ones(4, dtype=bool)}, r"reach\['flat'\] must be a non-empty \(layers, n\) table"),
        ({"empty": np.ones((0, 4), dtype=bool)}, r"reach\['empty'\] must be a non-empty"),
        ({"numbers": np.ones((2, 4))}, r"reach\['numbers'\] must be boolean"),
        ({"a": np.ones((1, 4), dtype=bool), "b": np.ones((1, 5), dtype=bool)}, r"same n input positions.*\[4, 5\]"),
    ],
)
def test_receptive_field_rejects_bad_tables(reach: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        receptive_field_figure(reach)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the shapes of attention


def test_attention_shapes_names_every_block_with_its_shape() -> None:
    fig = attention_shapes_figure(q_len=3, k_len=5, d_k=4, d_v=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    shown = texts(fig)
    for label in ("Q\n(3 × 4)", "Kᵀ\n(4 × 5)", "Q Kᵀ: scores\n(3 × 5)", "weights A\n(3 × 5)", "V\n(5 × 2)"):
        assert label in shown, label
    assert "A V: output\n(3 × 2)" in shown and any("softmax" in t and "each row" in t for t in shown)


def test_attention_shapes_draws_one_cell_per_number_and_six_outlines() -> None:
    q_len, k_len, d_k, d_v = 2, 3, 4, 5
    fig = attention_shapes_figure(q_len, k_len, d_k, d_v)
    patches = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    cells = [p for p in patches if p.get_fill()]
    numbers = q_len * d_k + d_k * k_len + 2 * q_len * k_len + k_len * d_v + q_len * d_v
    assert len(cells) == numbers and all(p.get_width() == p.get_height() == 1 for p in cells)
    outlines = [(p.get_width(), p.get_height()) for p in patches if not p.get_fill()]
    assert outlines == [
        (d_k, 1),
        (1, d_k),
        (1, 1),
        (k_len, 1),
        (d_v, k_len),
        (d_v, 1),
    ]  # query, key, score; row, V, out


@pytest.mark.parametrize(
    ("sizes", "name"),
    [({"q_len": 0}, "q_len"), ({"k_len": 13}, "k_len"), ({"d_k": 2.5}, "d_k"), ({"d_v": True}, "d_v")],
)
def test_attention_shapes_rejects_sizes_it_cannot_draw(sizes: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be an integer from 1 to 12"):
        attention_shapes_figure(**sizes)
