"""transformer_lib.viz: the architecture map and the three explorers (widgets with a PNG fallback)."""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from transformer_lib.embeddings import sinusoidal_positional_encoding  # noqa: E402
from transformer_lib.masks import causal_mask, padding_mask, target_mask  # noqa: E402
from transformer_lib.viz import (  # noqa: E402
    CHAPTERS_ON_THE_MAP,
    HIGHLIGHT_EDGE,
    Explorer,
    architecture_figure,
    attention_explorer,
    mask_explorer,
    positional_encoding_explorer,
)

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# The architecture map
# ---------------------------------------------------------------------------------------------


def blocks(fig) -> dict[str, object]:
    """gid 'block:<key>' -> patch."""
    return {p.get_gid()[6:]: p for p in fig.axes[0].patches if str(p.get_gid()).startswith("block:")}


def highlighted(fig) -> set[str]:
    return {k for k, p in blocks(fig).items() if to_hex(p.get_edgecolor()) == HIGHLIGHT_EDGE and p.get_linewidth() > 2}


def badges(fig) -> dict[str, str]:
    return {t.get_gid()[6:]: t.get_text() for t in fig.axes[0].texts if str(t.get_gid()).startswith("badge:")}


# What each chapter builds, from the course's table of contents (not from viz.py's own table).
BUILT_BY = {
    1: ({"rnn_baseline"}, {"enc_attn", "enc_ffn"}),
    2: ({"enc_attn_core", "dec_self_attn_core", "dec_cross_attn_core"}, {"enc_attn", "enc_padding_mask"}),
    3: ({"src_embedding", "tgt_embedding", "src_positions", "tgt_positions"}, {"enc_attn", "generator"}),
    4: ({"enc_padding_mask", "dec_causal_mask", "cross_padding_mask"}, {"enc_attn_core", "enc_ffn"}),
    5: ({"enc_attn", "dec_self_attn", "dec_cross_attn"}, {"enc_attn_core", "enc_padding_mask"}),
    6: ({"encoder_layer", "enc_ffn", "dec_ffn", "enc_add_norm_1", "dec_add_norm_3"}, {"decoder_layer", "enc_attn"}),
    7: ({"decoder_layer", "dec_self_attn", "dec_cross_attn", "generator"}, {"encoder_layer", "enc_ffn"}),
    8: ({"src_tokenizer", "tgt_tokenizer", "training"}, {"enc_attn", "decoding"}),
    9: ({"decoding", "dec_kv_cache", "cross_kv_cache"}, {"training", "enc_attn_core"}),
    10: ({"speed", "enc_attn_core", "dec_kv_cache", "cross_kv_cache"}, {"enc_ffn", "src_tokenizer"}),
    11: ({"scaling"}, {"enc_attn", "generator", "speed"}),
    12: ({"chinese", "src_tokenizer", "src_embedding"}, {"enc_attn", "generator"}),
    13: (
        {"families", "encoder_layer", "enc_attn", "dec_causal_mask", "generator"},
        {"decoder_layer", "dec_cross_attn"},
    ),
    14: (
        {"since_2017", "enc_add_norm_1", "dec_ffn", "src_positions", "dec_self_attn"},
        {"dec_cross_attn", "generator"},
    ),
}


@pytest.mark.parametrize("chapter", sorted(BUILT_BY))
def test_architecture_figure_highlights_the_blocks_of_the_chapter(chapter: int) -> None:
    must, must_not = BUILT_BY[chapter]
    fig = architecture_figure(chapter)
    lit = highlighted(fig)
    assert must <= lit, f"chapter {chapter}: not highlighted {sorted(must - lit)}"
    assert not (must_not & lit), f"chapter {chapter}: wrongly highlighted {sorted(must_not & lit)}"
    assert f"Chapter {chapter}" in " ".join(t.get_text() for t in fig.axes[0].texts)
    faded = set(blocks(fig)) - lit  # the rest is greyed out
    assert faded and all(to_hex(blocks(fig)[k].get_edgecolor()) != HIGHLIGHT_EDGE for k in faded)


def test_learning_path_labels_every_block_with_its_chapter_and_highlights_none() -> None:
    fig = architecture_figure()
    assert not highlighted(fig)
    labels = badges(fig)
    assert set(labels) == set(blocks(fig)), "every block carries a chapter badge"
    assert {int(v) for v in labels.values()} == set(CHAPTERS_ON_THE_MAP) == set(range(1, 15))
    assert labels["enc_padding_mask"] == "4" and labels["enc_attn_core"] == "2" and labels["generator"] == "7"


@pytest.mark.parametrize("bad", [0, 15, -1, "3", 2.0, True])
def test_architecture_figure_rejects_unknown_chapters(bad: object) -> None:
    with pytest.raises(ValueError, match="chapter must be None or an integer from 1 to 14"):
        architecture_figure(bad)  # type: ignore[arg-type]


def test_architecture_figure_is_a_pyplot_figure_so_a_notebook_shows_it() -> None:
    fig = architecture_figure(3)
    assert plt.fignum_exists(fig.number)


# ---------------------------------------------------------------------------------------------
# Explorers
# ---------------------------------------------------------------------------------------------


def tick_labels(axis_ticks) -> list[str]:
    return [t.get_text() for t in axis_ticks]


def attention_inputs():
    g = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(2, 3, 4, 5, 5, generator=g), dim=-1)  # (sentences, layers, heads, q, k)
    tokens = [["a", "b", "c", "d", "e"], ["x", "y", "z"]]  # the second sentence is padded to 5
    return weights, tokens


def test_attention_explorer_builds_a_widget_with_a_png_fallback() -> None:
    weights, tokens = attention_inputs()
    explorer = attention_explorer(weights, tokens)
    assert isinstance(explorer, Explorer) and explorer.png.startswith(PNG_SIGNATURE)
    bundle = explorer._repr_mimebundle_()
    assert WIDGET_VIEW in bundle, "the live widget is displayed in Jupyter"
    assert base64.b64decode(bundle["image/png"]) == explorer.png, "and a PNG for viewers without widgets"
    *controls, image = explorer.widget.children
    assert [c.description for c in controls] == ["sentence", "layer", "head"]
    assert image.value == explorer.png


def test_attention_explorer_draws_the_chosen_sentence_layer_and_head_with_tokens_on_the_axes() -> None:
    weights, tokens = attention_inputs()
    explorer = attention_explorer(weights, tokens).select(sentence=1, layer=2, head=3)
    ax = explorer.figure().axes[0]
    assert tick_labels(ax.get_xticklabels()) == tokens[1] and tick_labels(ax.get_yticklabels()) == tokens[1]
    np.testing.assert_allclose(
        ax.images[0].get_array(), weights[1, 2, 3, :3, :3].numpy(), rtol=1e-6
    )  # cropped to 3 tokens
    explorer.select(head=-1)  # the mean of the heads
    np.testing.assert_allclose(
        explorer.figure().axes[0].images[0].get_array(), weights[1, 2, :, :3, :3].mean(0).numpy(), rtol=1e-5
    )


def test_attention_explorer_redraws_when_a_control_changes() -> None:
    weights, tokens = attention_inputs()
    explorer = attention_explorer(weights, tokens)
    before = explorer.png
    head = explorer.widget.children[2]
    head.value = 2  # what a click on "head 2" does
    assert explorer.selection["head"] == 2
    assert explorer.png != before and explorer.widget.children[-1].value == explorer.png


def test_controls_with_a_single_choice_are_not_shown() -> None:
    weights = torch.softmax(torch.randn(3, 1, 2, 4, 4), dim=-1)  # one layer only
    explorer = attention_explorer(weights, [["a", "b", "c", "d"]] * 3)
    *controls, _ = explorer.widget.children
    assert [c.description for c in controls] == ["sentence", "head"]
    assert explorer.selection["layer"] == 0


def test_attention_explorer_takes_per_sentence_lists_and_cross_attention_tokens() -> None:
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(2, 1, 3, 4, generator=g), torch.rand(2, 1, 2, 6, generator=g)]  # different lengths
    queries = [["I", "run", "."], ["hi", "."]]
    keys = [["ich", "laufe", "schnell", "."], ["hallo", "du", "da", "und", "so", "."]]
    explorer = attention_explorer(weights, queries, keys, head_names=["only head"]).select(sentence=1, layer=1)
    ax = explorer.figure().axes[0]
    assert tick_labels(ax.get_xticklabels()) == keys[1] and tick_labels(ax.get_yticklabels()) == queries[1]


@pytest.mark.parametrize(
    "weights, tokens, message",
    [
        (torch.rand(2, 5, 5), [["a"] * 5, ["b"] * 5], r"shape \(sentences, layers, heads, q_len, k_len\)"),
        (torch.rand(3, 1, 1, 5, 5), [["a"] * 5, ["b"] * 5], "holds 3 sentences but tokens has 2"),
        (torch.rand(1, 1, 1, 2, 2), [["a", "b", "c"]], "too small for its 3 query"),
        (torch.full((1, 1, 1, 2, 2), float("nan")), [["a", "b"]], "NaN"),
        ([torch.rand(1, 2, 2, 2), torch.rand(1, 3, 2, 2)], [["a", "b"], ["c", "d"]], "same layers and heads"),
    ],
)
def test_attention_explorer_rejects_mismatched_inputs(weights, tokens, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attention_explorer(weights, tokens)


def test_attention_explorer_rejects_bad_tokens_and_names() -> None:
    with pytest.raises(TypeError, match="tokens"):
        attention_explorer(torch.rand(1, 1, 1, 2, 2), "ab")
    with pytest.raises(ValueError, match="head_names has 3 names for 1 heads"):
        attention_explorer(torch.rand(1, 1, 1, 2, 2), [["a", "b"]], head_names=["x", "y", "z"])


def mask_inputs():
    tgt = torch.tensor([[1, 3, 4, 0], [1, 5, 6, 7], [1, 0, 0, 0]])  # (batch=3, len=4), 0 = <pad>
    tokens = [["<bos>", "I", "run"], ["<bos>", "he", "runs", "fast"], ["<bos>"]]
    masks = {"padding": padding_mask(tgt, 0), "causal": causal_mask(4), "target": target_mask(tgt, 0)}
    return tgt, tokens, masks


def test_mask_explorer_shows_each_mask_broadcast_to_the_chosen_sentence() -> None:
    tgt, tokens, masks = mask_inputs()
    explorer = mask_explorer(masks, tokens)
    assert explorer.png.startswith(PNG_SIGNATURE) and WIDGET_VIEW in explorer._repr_mimebundle_()
    for name, mask in masks.items():
        for s in range(3):
            ax = explorer.select(mask=name, sentence=s).figure().axes[0]
            expected = mask.expand(3, 1, 4, 4)[s, 0].float().numpy()  # (q_len, k_len)
            np.testing.assert_array_equal(ax.images[0].get_array(), expected)
            assert tick_labels(ax.get_yticklabels()) == tokens[s] + ["<pad>"] * (4 - len(tokens[s]))


def test_mask_explorer_marks_queries_that_see_nothing() -> None:
    mask = torch.tensor([[True, False], [False, False]])  # query 1 may read no key at all
    ax = mask_explorer({"broken": mask}, [["a", "b"]]).figure().axes[0]
    assert any("sees nothing" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize(
    "masks, error, message",
    [
        ({"float": torch.ones(4, 4)}, TypeError, "must be boolean"),
        ({"heads": torch.ones(3, 2, 4, 4, dtype=torch.bool)}, ValueError, "has 2 heads"),
        ({"batch": torch.ones(2, 1, 4, 4, dtype=torch.bool)}, ValueError, "batch of 2, but tokens has 3"),
        ({"a": causal_mask(4), "b": causal_mask(5)}, ValueError, "different lengths"),
        ({"rect": torch.ones(3, 1, 2, 4, dtype=torch.bool)}, ValueError, "square"),
        ({}, ValueError, "non-empty mapping"),
    ],
)
def test_mask_explorer_rejects_mismatched_masks(masks, error, message: str) -> None:
    _, tokens, _ = mask_inputs()
    with pytest.raises(error, match=message):
        mask_explorer(masks, tokens)


def test_mask_explorer_rejects_sentences_longer_than_the_masks() -> None:
    with pytest.raises(ValueError, match="tokens\\[0\\] has 5 tokens but the masks cover only 4"):
        mask_explorer({"causal": causal_mask(4)}, [["a", "b", "c", "d", "e"]])


def test_positional_encoding_explorer_with_a_function_follows_the_sliders() -> None:
    explorer = positional_encoding_explorer(sinusoidal_positional_encoding, max_len=32, d_model=16)
    assert explorer.selection == {"max_len": 32, "d_model": 16, "pair": 2}  # d_model // 8 by default
    left, right = explorer.figure().axes[:2]
    np.testing.assert_allclose(left.images[0].get_array(), sinusoidal_positional_encoding(32, 16).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        right.lines[0].get_ydata(), sinusoidal_positional_encoding(32, 16)[:, 4].numpy(), rtol=1e-6
    )
    explorer.select(pair=7)
    explorer.widget.children[1].value = 8  # d_model slider -> 8: only pairs 0..3 exist now
    assert explorer.selection["d_model"] == 8 and explorer.selection["pair"] == 3
    assert [v for _, v in explorer.widget.children[2].options] == [0, 1, 2, 3]


def test_positional_encoding_explorer_with_a_fixed_matrix_has_only_the_pair_control() -> None:
    pe = sinusoidal_positional_encoding(10, 6)
    explorer = positional_encoding_explorer(pe[None], pair=1)  # (1, max_len, d_model), as in a module's buffer
    assert list(explorer.selection) == ["pair"] and explorer.selection["pair"] == 1
    np.testing.assert_allclose(explorer.figure().axes[0].images[0].get_array(), pe.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "encoding, kwargs, message",
    [
        (lambda n, d: torch.zeros(n, d + 1), {}, r"returned shape \(64, 65\)"),
        (torch.zeros(5), {}, r"\(max_len, d_model\) matrix"),
        (torch.full((4, 4), float("inf")), {}, "NaN or infinite"),
        (torch.zeros(4, 4), {"pair": 2}, "pair must be an integer from 0 to 1"),
        (sinusoidal_positional_encoding, {"d_model": 1}, "d_model must be an integer >= 2"),
    ],
)
def test_positional_encoding_explorer_rejects_bad_encodings(encoding, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        positional_encoding_explorer(encoding, **kwargs)


def test_select_rejects_unknown_controls_and_values() -> None:
    explorer = mask_explorer({"causal": causal_mask(3)}, [["a", "b", "c"]])
    with pytest.raises(ValueError, match="has no control"):
        explorer.select(head=1)
    with pytest.raises(ValueError, match="not one of the choices"):
        explorer.select(mask="padding")
    assert explorer.selection == {"mask": "causal", "sentence": 0}, "a rejected value changes nothing"


def test_explorers_without_ipywidgets_are_their_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` now raises ImportError
    explorer = mask_explorer({"causal": causal_mask(3)}, [["a", "b", "c"]])
    assert explorer.widget is None
    bundle = explorer._repr_mimebundle_()
    assert set(bundle) == {"image/png", "text/plain"} and base64.b64decode(bundle["image/png"]) == explorer.png


def test_the_library_imports_without_ipywidgets() -> None:
    code = "import sys; sys.modules['ipywidgets'] = None; import transformer_lib, transformer_lib.viz; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# The book's Sphinx extension: the generated learning-path figure, the script de-duplication
# ---------------------------------------------------------------------------------------------


def load_book_extension():
    spec = importlib.util.spec_from_file_location("course_book", ROOT / "book" / "_ext" / "course_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_intro_figure_is_drawn_by_the_library_and_rewritten_only_when_it_changes(tmp_path: Path) -> None:
    ext = load_book_extension()
    (path,) = ext.draw_figures(tmp_path)
    assert path.name == "architecture.png" and path.read_bytes().startswith(PNG_SIGNATURE)
    path.touch()  # a distinct time stamp, to see whether the next call rewrites the file
    stamp = path.stat().st_mtime_ns
    ext.draw_figures(tmp_path)
    assert path.stat().st_mtime_ns == stamp, "an unchanged figure must not be rewritten"
    path.write_bytes(b"stale")
    ext.draw_figures(tmp_path)
    assert path.read_bytes().startswith(PNG_SIGNATURE), "a stale figure is redrawn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["architecture.png"], "no temporary file is left behind"


def test_scripts_listed_twice_by_sphinx_are_listed_once() -> None:
    from sphinx.builders.html._assets import _JavaScript

    inline = "const THEBE_JS_URL = 'x'"
    scripts = [
        _JavaScript(None, body=inline),
        _JavaScript("_static/a.js"),
        _JavaScript("", body=inline),
        _JavaScript("_static/a.js", **{"async": "async"}),
    ]
    context = {"script_files": scripts}
    load_book_extension().dedupe_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] is scripts and len(scripts) == 3  # the repeated inline `const` is gone
    assert [s.filename for s in scripts] == [None, "_static/a.js", "_static/a.js"]
