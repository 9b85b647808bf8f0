"""The figures of chapters 7-9: the shifted target, the growing key/value cache, the beam-search tree."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from transformer_lib.viz import beam_search_tree_figure, kv_cache_figure, shifted_target_figure  # noqa: E402


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# --------------------------------------------------------------------------- the shifted target


def test_shifted_target_draws_input_and_labels_one_position_apart() -> None:
    fig = shifted_target_figure(["I", "love", "you"])
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    shown = texts(fig)
    for token in ("<bos>", "I", "love", "you", "<eos>", "t = 0", "t = 3", "decoder input", "label (to predict)"):
        assert token in shown, token
    assert "t = 4" not in shown  # n + 1 = 4 positions, 0 ... 3
    boxes = {(t.get_position(), t.get_text()) for t in fig.axes[0].texts}
    assert ((0, 1.0), "<bos>") in boxes and ((0, 0.0), "I") in boxes  # position 0: input <bos>, label y_1
    assert ((3, 1.0), "you") in boxes and ((3, 0.0), "<eos>") in boxes  # position n: input y_n, label <eos>
    arrows = [t for t in fig.axes[0].texts if t.get_text() == "" and getattr(t, "arrow_patch", None)]
    assert len(arrows) == 4 + 3  # one "predicts" arrow per position, one "is fed next" arrow between positions


def test_shifted_target_uses_the_given_special_tokens() -> None:
    shown = texts(shifted_target_figure(["我", "爱", "你"], bos="<s>", eos="</s>"))
    assert "<s>" in shown and "</s>" in shown and "<bos>" not in shown


@pytest.mark.parametrize("target", [[], "I love you", None, ["I", 3]])
def test_shifted_target_rejects_what_is_not_a_list_of_tokens(target: object) -> None:
    with pytest.raises(ValueError, match="target"):
        shifted_target_figure(target)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the key/value cache


def growing(steps: int, d_k: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """What a cache holds after each step: the first s + 1 rows of one tensor."""
    full = torch.randn(steps, d_k, generator=torch.Generator().manual_seed(seed))
    return [full[: s + 1] for s in range(steps)]


def test_kv_cache_figure_has_one_panel_per_step_for_keys_and_for_values() -> None:
    tokens = ["<s>", "▁A", "▁dog", "."]
    fig = kv_cache_figure(growing(4), growing(4, seed=1), tokens)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 4 and len(fig.axes) == 2 * 4 + 2  # 8 panels and 2 colour bars
    widths = [panels[s].images[0].get_array().shape for s in range(4)]
    assert widths == [(8, 1), (8, 2), (8, 3), (8, 4)]  # d_k rows, one more column per step
    assert [t.get_text() for t in panels[3].get_xticklabels()] == tokens
    assert [ax.get_title() for ax in panels[:4]] == ["step 1", "step 2", "step 3", "step 4"]
    assert not panels[7].get_title()  # the values row shares the step titles of the keys row
    assert "d_k = 8" in panels[0].get_ylabel() and "values" in panels[4].get_ylabel()


def test_kv_cache_figure_accepts_numpy_arrays() -> None:
    keys = [np.ones((s + 1, 3)) for s in range(2)]
    assert len(kv_cache_figure(keys, keys, ["a", "b"]).axes) == 2 * 2 + 2


@pytest.mark.parametrize(
    "keys, values, tokens, message",
    [
        ([], [], [], "keys must be a non-empty list"),
        ([torch.zeros(2, 4)], [torch.zeros(1, 4)], ["a"], r"keys\[0\] must have shape \(positions=1"),
        ([torch.zeros(1, 4), torch.zeros(2, 5)], [torch.zeros(1, 4)] * 2, ["a", "b"], r"keys\[1\].*d_k of step 0"),
        ([torch.zeros(1, 4)], [torch.zeros(1, 4)], ["a", "b"], "as many values and tokens as keys"),
        ([torch.zeros(1, 4)], [torch.zeros(1, 4)], "a", "as many values and tokens as keys"),
        (growing(13), growing(13), ["t"] * 13, "at most 12 steps"),
    ],
)
def test_kv_cache_figure_rejects_tensors_that_are_not_a_growing_cache(
    keys: list, values: list, tokens: list, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        kv_cache_figure(keys, values, tokens)


# --------------------------------------------------------------------------- the beam-search tree

LEVELS = [
    [(0, "A", math.log(0.5), True), (0, "The", math.log(0.4), True), (0, "One", math.log(0.1), False)],
    [(0, "dog", math.log(0.2), True), (0, "puppy", math.log(0.15), False), (1, "dog", math.log(0.36), True)],
    [(2, "<eos>", math.log(0.288), True), (0, "<eos>", math.log(0.1), True), (0, "runs", math.log(0.1), False)],
]


def test_beam_tree_draws_every_candidate_with_its_score_and_an_edge_to_its_parent() -> None:
    fig = beam_search_tree_figure(LEVELS)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    shown = texts(fig)
    assert "<bos>" in shown and "The  -0.92" in shown and "One  -2.30" in shown and "<eos>  -1.24" in shown
    assert {"step 1", "step 2", "step 3"} <= set(shown)
    edges = [t for t in fig.axes[0].texts if t.get_text() == "" and getattr(t, "arrow_patch", None)]
    assert len(edges) == sum(len(level) for level in LEVELS)
    fig.canvas.draw()  # the edges join text boxes: they must be drawable


def test_beam_tree_greys_out_the_pruned_candidates() -> None:
    fig = beam_search_tree_figure(LEVELS)
    by_text = {t.get_text(): t for t in fig.axes[0].texts}
    assert by_text["One  -2.30"].get_bbox_patch().get_linestyle() == "--"
    assert by_text["The  -0.92"].get_bbox_patch().get_linestyle() == "-"
    assert matplotlib.colors.to_hex(by_text["<eos>  -1.24"].get_bbox_patch().get_edgecolor()) == "#2e7d32"  # finished


@pytest.mark.parametrize(
    "levels, message",
    [
        ([], "levels must be a non-empty list"),
        ([[]], r"levels\[0\] must be a non-empty list"),
        ([[(0, "A", -0.1)]], r"levels\[0\]\[0\] must be a \(parent, token, score, kept\) tuple"),
        ([[(1, "A", -0.1, True)]], r"parent 1 is not a candidate of the step before"),
        ([[(0, "A", -0.1, False)], [(0, "dog", -0.5, True)]], r"levels\[1\]\[0\]: parent 0 was pruned"),
    ],
)
def test_beam_tree_rejects_candidates_that_do_not_form_a_beam(levels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        beam_search_tree_figure(levels)
