"""Chapter 1 toolkit — the book's pictures: the architecture map and three interactive explorers.

``architecture_figure(chapter)`` draws the encoder–decoder Transformer and highlights the blocks
that a chapter builds (``chapter=None``: every block labelled with its chapter, the learning path).

The explorers show attention weights, masks and positional encodings. Each is a small
ipywidgets view (controls above a picture) that works live in Jupyter and on Colab, and carries
a static PNG of what it shows, so it also reads where no widget can run (GitHub, nbviewer, a
book built without a kernel). Like the rest of chapter 1's toolkit, this module imports no later
module of the library: the chapters pass in the tensors (or functions) they built themselves.
ipywidgets is imported only when an explorer is made; without it an explorer is just its figure.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .utils import use_course_style

if TYPE_CHECKING:  # annotations only: importing matplotlib's pyplot is left to the functions
    from matplotlib.figure import Figure

__all__ = [
    "CHAPTERS_ON_THE_MAP",
    "architecture_figure",
    "Explorer",
    "attention_explorer",
    "mask_explorer",
    "positional_encoding_explorer",
    "tiled_attention_figure",
    "split_merge_heads_figure",
    "layer_norm_placement_figure",
    "shifted_target_figure",
    "kv_cache_figure",
    "beam_search_tree_figure",
    "receptive_field_figure",
    "attention_shapes_figure",
]

# The chapters the architecture map knows: 1-9 build the model and the translator, 10 makes it
# fast on one device, 11 scales it out (and ablates the recipe), 12 is the Chinese track, 13 cuts
# the model into GPT and BERT, 14 swaps in what changed since 2017.
CHAPTERS_ON_THE_MAP = tuple(range(1, 15))

# ---------------------------------------------------------------------------------------------
# The architecture map
# ---------------------------------------------------------------------------------------------

HIGHLIGHT_EDGE = "#c62828"  # edge of the blocks a chapter builds
_FADED_FACE, _FADED_EDGE, _FADED_TEXT = "#f3f3f3", "#cfcfcf", "#a6a6a6"
_EDGE, _TEXT = "#4d4d4d", "#1f1f1f"
_FACE = {  # one colour per kind of block, as in the paper's figure
    "io": "#e7e6f7",
    "embed": "#f8d7e3",
    "attn": "#fde1bf",
    "core": "#f9bd7f",
    "mask": "#d4ebcf",
    "cache": "#d3e4f5",
    "norm": "#fff1ad",
    "ffn": "#cde5f6",
    "frame": "#fbfbfb",
    "linear": "#e2d6f2",
    "extra": "#e3f1ee",
}


@dataclass(frozen=True)
class _Block:
    """One box of the map: ``chapters[0]`` builds it (its badge); every chapter listed highlights it."""

    key: str
    label: str
    x: float
    y: float
    w: float
    h: float
    kind: str
    chapters: tuple[int, ...]
    fontsize: float = 10.5


_ENC_X, _DEC_X, _BOX_W = 5.5, 45.5, 25.0  # left edges of the two columns, width of their boxes


def _attention(
    x: float,
    y: float,
    key: str,
    label: str,
    chapters: tuple[int, ...],
    tags: Sequence[tuple[str, str, str, tuple[int, ...]]],
) -> list[_Block]:
    """An attention box (chapter 5's module, used by chapter 7) around its scaled dot-product core (chapter 2)."""
    blocks = [
        _Block(key, label, x, y, _BOX_W, 10.5, "attn", chapters),
        _Block(f"{key}_core", "softmax(QKᵀ/√d_k)·V", x + 1.2, y + 0.8, _BOX_W - 2.4, 3.8, "core", (2, 10), 9),
    ]
    tag_h = 10.5 / len(tags) - 0.4
    for i, (tag_key, tag_label, kind, tag_chapters) in enumerate(tags):
        blocks.append(
            _Block(tag_key, tag_label, x + _BOX_W + 0.8, y + i * (tag_h + 0.4), 8.0, tag_h, kind, tag_chapters, 8.5)
        )
    return blocks


# The boxes on the right: what a chapter builds around the model (key, label, chapters).
_AROUND_THE_MODEL = [
    ("rnn_baseline", "RNN encoder–decoder\nwith attention:\nthe baseline", (1,)),
    ("training", "training: Multi30k,\nlabel smoothing,\nwarmup", (8,)),
    ("decoding", "decoding: greedy\nand beam search,\nKV cache, BLEU", (9,)),
    ("speed", "making it fast:\nfused attention\nkernels, KV cache", (10,)),
    ("scaling", "scaling out:\nseveral processes,\nablations", (11,)),
    ("chinese", "Chinese track:\nChinese→English,\nChinese tokens", (12,)),
    ("families", "GPT and BERT:\none half each,\ntheir own masks", (13,)),
    ("since_2017", "since 2017: RMSNorm,\nSwiGLU, RoPE,\ngrouped queries", (14,)),
]


def _blocks() -> list[_Block]:
    """Every block of the map, in drawing order (frames first). The main flow of each column is bottom-up."""
    e, d, w = _ENC_X, _DEC_X, _BOX_W
    blocks = [
        _Block("encoder_layer", "", e - 2.5, 26, 38, 39, "frame", (6, 13)),
        _Block("decoder_layer", "", d - 2.5, 26, 38, 58, "frame", (7,)),
        _Block("src_tokenizer", "tokenizer (subwords)", e, 5, w, 4.5, "io", (8, 12)),
        _Block("tgt_tokenizer", "tokenizer (subwords)", d, 5, w, 4.5, "io", (8,)),
        _Block("src_embedding", "input embedding", e, 12, w, 4.5, "embed", (3, 12)),
        _Block("tgt_embedding", "output embedding", d, 12, w, 4.5, "embed", (3,)),
        _Block("src_positions", "+ positional encoding", e, 19, w, 4.5, "embed", (3, 14)),
        _Block("tgt_positions", "+ positional encoding", d, 19, w, 4.5, "embed", (3, 14)),
    ]
    blocks += _attention(
        e,
        28,
        "enc_attn",
        "multi-head\nself-attention",
        (5, 13, 14),
        [("enc_padding_mask", "padding\nmask", "mask", (4, 13))],
    )
    blocks += [
        _Block("enc_add_norm_1", "Add & Norm", e, 41.5, w, 4, "norm", (6, 14)),
        _Block("enc_ffn", "feed-forward network", e, 48.5, w, 5, "ffn", (6, 14)),
        _Block("enc_add_norm_2", "Add & Norm", e, 56, w, 4, "norm", (6, 14)),
    ]
    blocks += _attention(
        d,
        28,
        "dec_self_attn",
        "masked multi-head\nself-attention",
        (7, 5, 14),
        [("dec_kv_cache", "KV cache", "cache", (9, 10, 13, 14)), ("dec_causal_mask", "causal\nmask", "mask", (4, 13))],
    )
    blocks += [_Block("dec_add_norm_1", "Add & Norm", d, 41.5, w, 4, "norm", (6, 14))]
    blocks += _attention(
        d,
        48.5,
        "dec_cross_attn",
        "multi-head\ncross-attention",
        (7, 5),
        [("cross_kv_cache", "KV cache", "cache", (9, 10)), ("cross_padding_mask", "padding\nmask", "mask", (4,))],
    )
    blocks += [
        _Block("dec_add_norm_2", "Add & Norm", d, 62, w, 4, "norm", (6, 14)),
        _Block("dec_ffn", "feed-forward network", d, 69, w, 5, "ffn", (6, 14)),
        _Block("dec_add_norm_3", "Add & Norm", d, 76.5, w, 4, "norm", (6, 14)),
        _Block("generator", "linear + softmax", d, 86, w, 4.5, "linear", (7, 13)),
    ]
    for i, (key, label, chapters) in enumerate(_AROUND_THE_MODEL):
        blocks.append(_Block(key, label, 82, 78.5 - i * 10.6, 17.5, 9.8, "extra", chapters, 8.5))
    return blocks


# The main flow: each column from its tokenizer up, then the memory link and the output.
_FLOWS = (
    ("src_tokenizer", "src_embedding", "src_positions", "enc_attn", "enc_add_norm_1", "enc_ffn", "enc_add_norm_2"),
    (
        "tgt_tokenizer",
        "tgt_embedding",
        "tgt_positions",
        "dec_self_attn",
        "dec_add_norm_1",
        "dec_cross_attn",
        "dec_add_norm_2",
        "dec_ffn",
        "dec_add_norm_3",
        "generator",
    ),
)


def _check_chapter(chapter: object) -> None:
    """Raise ``ValueError`` unless ``chapter`` is None or a chapter on the map."""
    if chapter is None:
        return
    if (
        isinstance(chapter, bool)
        or not isinstance(chapter, (int, np.integer))
        or int(chapter) not in CHAPTERS_ON_THE_MAP
    ):
        raise ValueError(
            f"chapter must be None or an integer from {CHAPTERS_ON_THE_MAP[0]} to {CHAPTERS_ON_THE_MAP[-1]}, "
            f"got {chapter!r}"
        )


def architecture_figure(chapter: int | None = None) -> "Figure":
    """The encoder–decoder Transformer as a map of blocks, each labelled with the chapter that builds it.

    With ``chapter=N`` (1 to 14) the blocks that chapter builds are drawn in colour with a red
    edge and every other block is greyed out; with ``chapter=None`` every block is in colour (the
    learning path). Chapters 1 and 8-14 build things around the model (the RNN baseline, training,
    decoding, speed, scaling out, the Chinese track, GPT and BERT, the refinements since 2017): they
    appear as labelled boxes on the right, and also highlight the blocks they touch (tokenizers, KV
    caches, attention kernels, norms). Returns the (pyplot) figure; every block's patch has the gid ``"block:<key>"``.
    """
    _check_chapter(chapter)
    import matplotlib.pyplot as plt

    with plt.rc_context():
        use_course_style()
        fig = plt.figure(figsize=(10, 8.2))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.axis("off")
        by_key = {b.key: b for b in _blocks()}
        for b in by_key.values():
            _draw_block(ax, b, chapter)
        _draw_flows(ax, by_key)
        ax.text(90.75, 89.5, "around the model", ha="center", fontsize=10, style="italic", color=_GREY)
        title = (
            "The learning path: which chapter builds which block"
            if chapter is None
            else f"Chapter {chapter} builds the highlighted blocks"
        )
        ax.text(50, 98.0, title, ha="center", va="center", fontsize=14, weight="bold")
    return fig


_GREY = "#555555"


def _draw_block(ax: Any, b: _Block, chapter: int | None) -> None:
    """One block of the map: in colour if ``chapter`` builds it (red edge) or shows everything, else grey."""
    from matplotlib.patches import FancyBboxPatch

    on = chapter is None or chapter in b.chapters
    highlighted = chapter is not None and on
    face = _FACE[b.kind] if on else _FADED_FACE
    edge = HIGHLIGHT_EDGE if highlighted else (_EDGE if on else _FADED_EDGE)
    patch = FancyBboxPatch(
        (b.x, b.y),
        b.w,
        b.h,
        boxstyle="round,pad=0,rounding_size=0.7",
        facecolor=face,
        edgecolor=edge,
        linewidth=2.8 if highlighted else 1.0,
        gid=f"block:{b.key}",
        linestyle="--" if b.kind == "frame" else "-",
        zorder=1 if b.kind == "frame" else 2,
    )
    ax.add_patch(patch)
    text = dict(
        ha="center",
        va="center",
        fontsize=b.fontsize,
        color=_TEXT if on else _FADED_TEXT,
        weight="bold" if highlighted else "normal",
        zorder=3,
        linespacing=1.1,
    )
    if b.kind == "attn":  # the label sits above the core strip
        ax.text(b.x + b.w / 2, b.y + b.h - 2.9, b.label, **text)
    elif b.label:
        ax.text(b.x + b.w / 2, b.y + b.h / 2, b.label, **text)
    badge_at = (b.x + 1.8, b.y + b.h - 1.8) if b.kind == "frame" else (b.x + b.w - 0.2, b.y + b.h - 0.2)
    badge_face = (HIGHLIGHT_EDGE if highlighted else _GREY) if on else "#c4c4c4"
    ax.text(
        *badge_at,
        str(b.chapters[0]),
        ha="center",
        va="center",
        fontsize=8,
        weight="bold",
        color="white",
        zorder=5,
        gid=f"badge:{b.key}",
        bbox=dict(boxstyle="circle,pad=0.2", facecolor=badge_face, edgecolor="none"),
    )


def _arrow(ax: Any, points: list[tuple[float, float]]) -> None:
    """A polyline through ``points`` whose last segment ends in an arrow head."""
    from matplotlib.patches import FancyArrowPatch

    for start, end in zip(points[:-2], points[1:-1]):
        ax.plot([start[0], end[0]], [start[1], end[1]], color="#666666", lw=1.2, zorder=1.5)
    ax.add_patch(
        FancyArrowPatch(
            points[-2], points[-1], arrowstyle="-|>", mutation_scale=10, color="#666666", lw=1.2, zorder=1.5
        )
    )


def _draw_flows(ax: Any, by_key: dict[str, _Block]) -> None:
    """The arrows through the encoder and decoder stacks, the memory into cross-attention, the stack labels."""
    for flow, bottom_text, top_text in zip(
        _FLOWS, ("source sentence", "target so far (shifted right)"), (None, "probabilities of the next token")
    ):
        first = by_key[flow[0]]
        x = first.x + first.w / 2
        ax.text(x, 1.0, bottom_text, ha="center", fontsize=10, style="italic")
        _arrow(ax, [(x, 3.3), (x, first.y)])
        for lower, upper in zip(flow[:-1], flow[1:]):
            _arrow(ax, [(x, by_key[lower].y + by_key[lower].h), (x, by_key[upper].y)])
        if top_text:
            last = by_key[flow[-1]]
            _arrow(ax, [(x, last.y + last.h), (x, 92.3)])
            ax.text(x, 92.6, top_text, ha="center", va="bottom", fontsize=10, style="italic")
    enc, cross = by_key["encoder_layer"], by_key["dec_cross_attn"]
    memory_y, bend_x, mid = enc.y + enc.h + 3.5, by_key["decoder_layer"].x - 2, cross.y + cross.h / 2
    x = _ENC_X + _BOX_W / 2
    _arrow(ax, [(x, by_key["enc_add_norm_2"].y + 4), (x, memory_y), (bend_x, memory_y), (bend_x, mid), (cross.x, mid)])
    ax.text(
        (x + bend_x) / 2,
        memory_y + 0.8,
        "memory (keys, values)",
        ha="center",
        va="bottom",
        fontsize=9,
        style="italic",
        color=_GREY,
    )
    for frame, name in ((enc, "encoder layer"), (by_key["decoder_layer"], "decoder layer")):
        top = frame.y + frame.h
        ax.text(frame.x + 3.6, top - 1.8, name, ha="left", va="center", fontsize=9.5, style="italic", color=_GREY)
        ax.text(
            frame.x + frame.w - 2.4, top - 1.9, "×N", ha="center", va="center", fontsize=11, weight="bold", color=_GREY
        )


# ---------------------------------------------------------------------------------------------
# Explorers
# ---------------------------------------------------------------------------------------------

Choices = Sequence[tuple[str, Any]]


@dataclass
class _Control:
    """One control of an explorer: a choice among ``(label, value)`` pairs, shown as ``style``."""

    name: str
    description: str
    choices: Choices | Callable[[dict[str, Any]], Choices]
    style: str = "dropdown"  # "dropdown" or "slider"

    def options(self, selection: dict[str, Any]) -> list[tuple[str, Any]]:
        return list(self.choices(selection) if callable(self.choices) else self.choices)


def _png(fig: "Figure") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buffer.getvalue()


def _png_width(png: bytes) -> int:
    """Pixel width of a PNG, from its header (shown at that size: never stretched to the page)."""
    return int.from_bytes(png[16:20], "big")


class Explorer:
    """An interactive figure: ipywidgets controls above a picture, with a static PNG fallback.

    In Jupyter or on Colab, displaying an explorer shows its live controls; every change redraws
    the picture (matplotlib, the course style). ``png`` is the picture of the current selection,
    and the explorer's display data carries it as ``image/png`` beside the widget, so a viewer
    that cannot run widgets shows the figure instead. ``figure()`` draws the current selection as
    a matplotlib Figure and ``select(...)`` changes the selection from code. Made by
    ``attention_explorer``, ``mask_explorer`` and ``positional_encoding_explorer``.
    """

    def __init__(
        self,
        title: str,
        controls: Sequence[_Control],
        draw: Callable[[dict[str, Any]], "Figure"],
        initial: Mapping[str, Any] | None = None,
    ) -> None:
        self.title = title
        self._controls = {c.name: c for c in controls}
        self._draw = draw
        self.selection: dict[str, Any] = {}
        for c in controls:  # each control's first choice, unless told otherwise
            options = c.options(self.selection)
            if not options:
                raise ValueError(f"the control {c.name!r} of {title!r} has nothing to choose from")
            self.selection[c.name] = options[0][1]
        self._check_and_set(dict(initial or {}))
        self.png = _png(self.figure())
        self.widget = self._make_widget()

    # -- selection ------------------------------------------------------------------------------
    def _check_and_set(self, values: dict[str, Any]) -> None:
        unknown = set(values) - set(self._controls)
        if unknown:
            raise ValueError(
                f"{self.title!r} has no control {sorted(unknown)}; its controls are {list(self._controls)}"
            )
        selection = {**self.selection, **values}  # checked first: a bad value leaves the selection as it was
        for c in self._controls.values():  # dependent choices (e.g. dimension pairs of d_model) may change
            allowed = [v for _, v in c.options(selection)]
            current = selection[c.name]
            if current not in allowed:
                if c.name in values:
                    raise ValueError(f"{c.name}={current!r} is not one of the choices {allowed}")
                numeric = all(isinstance(v, (int, float)) for v in [current, *allowed])
                selection[c.name] = min(allowed, key=lambda v: abs(v - current)) if numeric else allowed[0]
        self.selection = selection

    def select(self, **values: Any) -> "Explorer":
        """Choose values for some controls (by name), redraw, and return the explorer."""
        self._check_and_set(values)
        self._refresh()
        return self

    def figure(self) -> "Figure":
        """The current selection drawn as a matplotlib Figure (not registered with pyplot)."""
        import matplotlib

        with matplotlib.rc_context():
            use_course_style()
            return self._draw(dict(self.selection))

    # -- widgets --------------------------------------------------------------------------------
    def _make_widget(self) -> Any:
        try:
            import ipywidgets as w
        except ImportError:  # the library works without ipywidgets: the explorer is then its figure
            return None
        self._widgets: dict[str, Any] = {}
        label = {"description_width": "6em"}  # one column of labels, controls aligned after it
        for c in self._controls.values():
            options = c.options(self.selection)
            if len(options) < 2 and not callable(c.choices):  # nothing to choose: no control
                continue
            kwargs = dict(options=options, value=self.selection[c.name], description=c.description)
            if c.style == "slider":
                widget = w.SelectionSlider(
                    **kwargs, continuous_update=False, style=label, layout=w.Layout(width="26em")
                )
            else:
                widget = w.Dropdown(**kwargs, style=label, layout=w.Layout(width="max-content", max_width="100%"))
            widget.observe(self._on_change(c.name), names="value")
            self._widgets[c.name] = widget
        self._image = w.Image(
            value=self.png,
            format="png",
            width=str(_png_width(self.png)),
            layout=w.Layout(max_width="100%", align_self="flex-start"),
        )
        return w.VBox([*self._widgets.values(), self._image])

    def _on_change(self, name: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if self._updating or change["new"] == self.selection.get(name):
                return
            self._check_and_set({name: change["new"]})
            self._refresh()

        return handler

    _updating = False

    def _refresh(self) -> None:
        self.png = _png(self.figure())
        if self.widget is None:
            return
        self._updating = True
        try:
            for name, widget in self._widgets.items():
                options = self._controls[name].options(self.selection)
                if list(widget.options) != options:
                    widget.options = options
                widget.value = self.selection[name]
        finally:
            self._updating = False
        self._image.value = self.png
        self._image.width = str(_png_width(self.png))

    # -- display --------------------------------------------------------------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.widget is not None:
            data.update(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        data["image/png"] = base64.b64encode(self.png).decode("ascii")
        data["text/plain"] = repr(self)
        return data

    def __repr__(self) -> str:
        chosen = ", ".join(f"{k}={v!r}" for k, v in self.selection.items())
        return f"<Explorer {self.title!r}: {chosen}>"


# -- input checks shared by the explorers ------------------------------------------------------


def _as_array(x: Any, name: str) -> np.ndarray:
    """A tensor or array-like as a float numpy array, with a clear error for anything else."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a tensor or an array, got {type(x).__name__}") from error
    if array.dtype == object:
        raise TypeError(f"{name} must be a tensor or an array of numbers, got an array of objects (ragged lists?)")
    return array


def _token_lists(tokens: Any, name: str) -> list[list[str]]:
    """One list of token strings per sentence (a single list of strings counts as one sentence)."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or len(tokens) == 0:
        raise TypeError(f"{name} must be a list of token strings, or one such list per sentence; got {tokens!r}")
    if all(isinstance(t, str) for t in tokens):
        return [list(tokens)]
    lists = []
    for i, sentence in enumerate(tokens):
        if (
            isinstance(sentence, str)
            or not isinstance(sentence, Sequence)
            or not all(isinstance(t, str) for t in sentence)
        ):
            raise TypeError(f"{name}[{i}] must be a list of token strings, got {sentence!r}")
        if not sentence:
            raise ValueError(f"{name}[{i}] is empty")
        lists.append(list(sentence))
    return lists


def _short(tokens: Sequence[str], limit: int = 40) -> str:
    text = " ".join(tokens)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _heatmap(ax: Any, matrix: np.ndarray, x_labels: Sequence[str], y_labels: Sequence[str], **imshow: Any) -> Any:
    image = ax.imshow(matrix, aspect="equal", interpolation="nearest", **imshow)
    rotate = max((len(t) for t in x_labels), default=0) > 2 or len(x_labels) > 12
    ax.set_xticks(
        range(len(x_labels)),
        x_labels,
        rotation=60 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor" if rotate else "default",
    )
    ax.set_yticks(range(len(y_labels)), y_labels)
    ax.set_xticks(np.arange(len(x_labels) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(y_labels) + 1) - 0.5, minor=True)
    ax.grid(False)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    return image


# -- attention ---------------------------------------------------------------------------------


def attention_explorer(
    weights: Any,
    tokens: Sequence[str] | Sequence[Sequence[str]],
    key_tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
    *,
    layer_names: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    title: str = "Attention weights",
) -> Explorer:
    """Explore attention weights by sentence, layer and head: a heatmap with the tokens on its axes.

    ``weights`` holds one ``(layers, heads, q_len, k_len)`` array per sentence: either a single
    tensor ``(sentences, layers, heads, q_len, k_len)`` (padded sentences are cropped to their
    tokens) or a list of per-sentence tensors of different lengths. ``tokens`` gives the query
    tokens of each sentence (one list of strings for a single sentence); ``key_tokens`` the key
    tokens when they differ (cross-attention), by default the same. The head control also offers
    the mean over the heads. Row ``t`` of the heatmap is how query ``t`` spreads its weight over
    the keys.
    """
    queries = _token_lists(tokens, "tokens")
    keys = queries if key_tokens is None else _token_lists(key_tokens, "key_tokens")
    if len(keys) != len(queries):
        raise ValueError(f"tokens has {len(queries)} sentences but key_tokens has {len(keys)}")
    per_sentence, shape = _checked_weights(weights, queries, keys)
    n_layers, n_heads = shape
    layer_names = _names(layer_names, n_layers, "layer", "layer_names")
    head_names = _names(head_names, n_heads, "head", "head_names")
    sentences = [(f"{i}: {_short(q)}", i) for i, q in enumerate(queries)]
    controls = [
        _Control("sentence", "sentence", sentences),
        _Control("layer", "layer", [(name, i) for i, name in enumerate(layer_names)]),
        _Control("head", "head", [(name, i) for i, name in enumerate(head_names)] + [("mean of the heads", -1)]),
    ]

    def draw(sel: dict[str, Any]) -> "Figure":
        from matplotlib.figure import Figure

        s, layer, head = sel["sentence"], sel["layer"], sel["head"]
        q, k = queries[s], keys[s]
        w = per_sentence[s][layer]  # (heads, q_len, k_len)
        matrix = (w.mean(axis=0) if head < 0 else w[head])[: len(q), : len(k)]
        fig = Figure(figsize=(min(2.6 + 0.36 * len(k), 9.0), min(1.9 + 0.3 * len(q), 7.5)))
        ax = fig.add_subplot()
        image = _heatmap(ax, matrix, k, q, cmap="Blues", vmin=0, vmax=max(1.0, float(matrix.max())))
        head_label = "mean of the heads" if head < 0 else head_names[head]
        parts = (
            ([f"sentence {s}"] if len(queries) > 1 else [])
            + ([layer_names[layer]] if n_layers > 1 else [])
            + [head_label]
        )
        ax.set(title=f"{title}: {', '.join(parts)}", xlabel="key (read)", ylabel="query (reading)")
        fig.colorbar(image, ax=ax, shrink=0.85, label="attention weight")
        return fig

    return Explorer(title, controls, draw)


def _checked_weights(weights: Any, queries: list[list[str]], keys: list[list[str]]) -> tuple[list, tuple[int, int]]:
    """The attention weights of ``attention_explorer`` as one checked array per sentence, and (layers, heads)."""
    if isinstance(weights, (list, tuple)):
        per_sentence = [_as_array(w, f"weights[{i}]") for i, w in enumerate(weights)]
    else:
        array = _as_array(weights, "weights")
        if array.ndim == 4 and len(queries) == 1:  # one sentence given without its sentence axis
            array = array[None]
        if array.ndim != 5:
            raise ValueError(
                f"weights must have shape (sentences, layers, heads, q_len, k_len), got {tuple(array.shape)}"
            )
        per_sentence = list(array)
    if len(per_sentence) != len(queries):
        raise ValueError(f"weights holds {len(per_sentence)} sentences but tokens has {len(queries)}")
    shape = None
    for i, (w, q, k) in enumerate(zip(per_sentence, queries, keys)):
        if w.ndim != 4:
            raise ValueError(
                f"the weights of sentence {i} must have shape (layers, heads, q_len, k_len), got {tuple(w.shape)}"
            )
        if w.shape[2] < len(q) or w.shape[3] < len(k):
            raise ValueError(
                f"the weights of sentence {i} have q_len x k_len = {w.shape[2]} x {w.shape[3]}, "
                f"too small for its {len(q)} query and {len(k)} key tokens"
            )
        if not np.isfinite(w).all():
            raise ValueError(f"the weights of sentence {i} contain NaN or infinite values")
        if shape is not None and w.shape[:2] != shape:
            raise ValueError(
                f"every sentence needs the same layers and heads; sentence {i} has {w.shape[:2]}, not {shape}"
            )
        shape = w.shape[:2]
    return per_sentence, shape


def _names(names: Sequence[str] | None, n: int, word: str, argument: str) -> list[str]:
    if names is None:
        return [f"{word} {i}" for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ValueError(f"{argument} has {len(names)} names for {n} {word}s")
    return [str(x) for x in names]


# -- masks -------------------------------------------------------------------------------------


def _mask_stack(mask: Any, name: str, batch: int) -> np.ndarray:
    """A boolean mask broadcastable to (batch, heads, q_len, k_len) -> (batch, q_len, k_len)."""
    array = _as_array(mask, f"mask {name!r}")
    if array.dtype != np.bool_:
        raise TypeError(f"mask {name!r} must be boolean (True = may attend), got dtype {array.dtype}")
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(
                f"mask {name!r} has {array.shape[1]} heads; the explorer shows masks shared by the heads "
                "(shape (batch, 1, q_len, k_len))"
            )
        array = array[:, 0]
    elif array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        raise ValueError(
            f"mask {name!r} must have 2 to 4 dimensions, (q_len, k_len) up to (batch, 1, q_len, k_len); "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] not in (1, batch):
        raise ValueError(f"mask {name!r} is for a batch of {array.shape[0]}, but tokens has {batch} sentences")
    length = array.shape[-1]
    if array.shape[1] not in (1, length):
        raise ValueError(
            f"mask {name!r} has {array.shape[1]} queries and {length} keys; self-attention masks are square"
        )
    return np.broadcast_to(array, (batch, length, length))


def mask_explorer(
    masks: Mapping[str, Any],
    tokens: Sequence[str] | Sequence[Sequence[str]],
    *,
    pad_token: str = "<pad>",
    title: str = "Attention mask",
) -> Explorer:
    """Explore attention masks: which key (column) each query (row) may read, per sentence of a batch.

    ``masks`` maps a name to a boolean mask, ``True`` = may attend, of any shape that broadcasts
    to ``(batch, 1, len, len)``: a padding mask ``(batch, 1, 1, len)``, a causal mask
    ``(len, len)``, a target mask ``(batch, 1, len, len)``. ``tokens`` holds one list of token
    strings per sentence; shorter lists are padded with ``pad_token`` for the axis labels.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty mapping from a name to a boolean mask")
    sentences = _token_lists(tokens, "tokens")
    stacks = {str(name): _mask_stack(m, str(name), len(sentences)) for name, m in masks.items()}
    lengths = {name: s.shape[-1] for name, s in stacks.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the masks have different lengths {lengths}; they must describe the same batch")
    length = next(iter(lengths.values()))
    labels = []
    for i, sentence in enumerate(sentences):
        if len(sentence) > length:
            raise ValueError(f"tokens[{i}] has {len(sentence)} tokens but the masks cover only {length} positions")
        labels.append(sentence + [pad_token] * (length - len(sentence)))
    controls = [
        _Control("mask", "mask", [(name, name) for name in stacks]),
        _Control("sentence", "sentence", [(f"{i}: {_short(s)}", i) for i, s in enumerate(sentences)]),
    ]

    def draw(sel: dict[str, Any]) -> "Figure":
        from matplotlib.figure import Figure

        name, s = sel["mask"], sel["sentence"]
        m = stacks[name][s]  # (len, len)
        fig = Figure(figsize=(min(3.4 + 0.38 * length, 9.0), min(2.4 + 0.34 * length, 7.5)))
        ax = fig.add_subplot()
        _heatmap(ax, m.astype(float), labels[s], labels[s], cmap="Greens", vmin=0, vmax=1.4)
        visible = m.sum(axis=1)
        for row in np.flatnonzero(visible == 0):  # a query that may read nothing: its softmax is undefined
            ax.text(length - 0.5, row, " sees nothing", va="center", ha="left", fontsize=8, color=HIGHLIGHT_EDGE)
        sentence = f", sentence {s}" if len(sentences) > 1 else ""
        ax.set(title=f"{title} '{name}'{sentence}", xlabel="key (read); green: may attend", ylabel="query (reading)")
        return fig

    return Explorer(title, controls, draw)


# -- positional encodings ----------------------------------------------------------------------


def positional_encoding_explorer(
    encoding: Any | Callable[[int, int], Any],
    *,
    max_len: int = 64,
    d_model: int = 64,
    pair: int | None = None,
    title: str = "Positional encoding",
) -> Explorer:
    """Explore a positional-encoding matrix: the whole ``(positions, dimensions)`` heatmap and one pair of dimensions.

    ``encoding`` is either the matrix itself, ``(max_len, d_model)``, or a function
    ``(max_len, d_model) -> matrix`` such as ``sinusoidal_positional_encoding``; with a function the
    explorer also offers sliders for ``max_len`` and ``d_model`` (starting at the given values).
    The right panel follows dimensions ``2i`` and ``2i + 1`` (a sine and a cosine of one frequency
    in the paper's encoding) across the positions, starting with ``i = pair`` (default
    ``d_model // 8``: a wave slow enough to follow by eye).
    """
    for name, value in (("max_len", max_len), ("d_model", d_model)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    cache: dict[tuple[int, int], np.ndarray] = {}

    def matrix(length: int, width: int) -> np.ndarray:
        if (length, width) not in cache:
            cache[(length, width)] = _checked_encoding(encoding, length, width)
        return cache[(length, width)]

    if callable(encoding):
        lengths = sorted({8, 16, 32, 64, 128, 256, int(max_len)})
        widths = sorted({8, 16, 32, 64, 128, 256, 512, int(d_model)})
        controls = [
            _Control("max_len", "max_len", [(str(n), n) for n in lengths], "slider"),
            _Control("d_model", "d_model", [(str(n), n) for n in widths], "slider"),
        ]
        initial = {"max_len": int(max_len), "d_model": int(d_model)}
        width = matrix(initial["max_len"], initial["d_model"]).shape[1]  # check the function once, up front
    else:
        fixed = matrix(0, 0)  # the key is irrelevant for a fixed matrix
        controls, initial, width = [], {}, fixed.shape[1]
    n_pairs = (width + 1) // 2
    start = width // 8 if pair is None else pair
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n_pairs:
        raise ValueError(
            f"pair must be an integer from 0 to {n_pairs - 1} (dimensions 2*pair, 2*pair + 1), got {pair!r}"
        )
    initial["pair"] = int(start)
    pairs = lambda sel: [(f"{2 * i}, {2 * i + 1}", i) for i in range((_shape(sel, matrix)[1] + 1) // 2)]  # noqa: E731
    controls.append(_Control("pair", "dimensions", pairs, "slider"))

    def draw(sel: dict[str, Any]) -> "Figure":
        return _draw_encoding(
            matrix(sel["max_len"], sel["d_model"]) if callable(encoding) else fixed, sel["pair"], title
        )

    return Explorer(title, controls, draw, initial)


def _checked_encoding(encoding: Any | Callable[[int, int], Any], length: int, width: int) -> np.ndarray:
    """The positional-encoding matrix (computed by ``encoding`` if it is a function), checked, as floats."""
    pe = _as_array(encoding(length, width) if callable(encoding) else encoding, "the positional encoding")
    if pe.ndim == 3 and pe.shape[0] == 1:  # (1, max_len, d_model), as stored in a module's buffer
        pe = pe[0]
    if callable(encoding) and pe.shape != (length, width):
        raise ValueError(
            f"the encoding function returned shape {tuple(pe.shape)} for "
            f"(max_len, d_model) = ({length}, {width}); expected exactly that shape"
        )
    if pe.ndim != 2 or min(pe.shape) < 2:
        raise ValueError(
            f"the positional encoding must be a (max_len, d_model) matrix with both sizes >= 2, "
            f"got shape {tuple(pe.shape)}"
        )
    if not np.isfinite(pe).all():
        raise ValueError("the positional encoding contains NaN or infinite values")
    return pe.astype(float)


def _draw_encoding(pe: np.ndarray, i: int, title: str) -> "Figure":
    """The heatmap of ``pe`` with the pair of dimensions ``2i, 2i + 1`` boxed, and that pair as curves."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(6.8, 3.1), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.15, 1])
    image = left.imshow(pe, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    left.add_patch(
        Rectangle(
            (2 * i - 0.5, -0.5), min(2, pe.shape[1] - 2 * i), pe.shape[0], fill=False, edgecolor="black", linewidth=1.4
        )
    )  # the pair shown on the right
    left.grid(False)
    left.set_title(f"{pe.shape[0]} positions × {pe.shape[1]} dimensions", fontsize=10)
    left.set(xlabel="dimension", ylabel="position")
    fig.colorbar(image, ax=left, shrink=0.9, pad=0.02)
    positions = np.arange(pe.shape[0])
    right.plot(positions, pe[:, 2 * i], marker=".", ms=3, label=f"dimension {2 * i}")
    if 2 * i + 1 < pe.shape[1]:
        right.plot(positions, pe[:, 2 * i + 1], marker=".", ms=3, label=f"dimension {2 * i + 1}")
    right.set_title(f"dimensions {2 * i} and {2 * i + 1}", fontsize=10)
    right.set(xlabel="position", ylabel="value", ylim=(-1.15, 1.75), yticks=[-1, -0.5, 0, 0.5, 1])
    right.legend(loc="upper center", ncols=2, fontsize=8, frameon=False, handlelength=1.2, columnspacing=1.0)
    fig.suptitle(title, fontweight="bold", fontsize=12)
    return fig


def _shape(sel: dict[str, Any], matrix: Callable[[int, int], np.ndarray]) -> tuple[int, int]:
    """The (max_len, d_model) of the matrix the current selection shows."""
    if "max_len" in sel and "d_model" in sel:
        return matrix(sel["max_len"], sel["d_model"]).shape
    return matrix(0, 0).shape


# ---------------------------------------------------------------------------------------------
# Figures of chapter 10: attention one tile at a time
# ---------------------------------------------------------------------------------------------


def tiled_attention_figure(
    q_len: int, k_len: int, block_size: int, running_max: Sequence[float], running_denominator: Sequence[float]
) -> "Figure":
    """The online softmax of ``flash.tiled_attention``: the score matrix cut into key blocks, and one query's state.

    Left: the ``(q_len, k_len)`` score matrix as tiles of ``block_size`` keys, the order in which they
    are computed, and the query row followed on the right. Right: that query's running maximum
    ``m`` and its softmax denominator rescaled to the final maximum (``denom * exp(m - m_final)``),
    after each block. The last values are those of the full softmax: the dashed lines.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    m, denom = np.asarray(running_max, dtype=float), np.asarray(running_denominator, dtype=float)
    blocks = -(-k_len // block_size) if min(q_len, k_len, block_size) > 0 else 0
    if blocks == 0 or m.shape != (blocks,) or denom.shape != (blocks,):
        raise ValueError(
            f"need positive sizes and one running value per block of keys ({blocks} blocks), "
            f"got {m.shape} maxima and {denom.shape} denominators"
        )
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    for b in range(blocks):
        width = min(block_size, k_len - b * block_size)
        left.add_patch(Rectangle((b * block_size, 0), width, q_len, facecolor=f"C{b % 10}", alpha=0.35, edgecolor="k"))
        left.text(b * block_size + width / 2, q_len / 2, f"tile {b + 1}", ha="center", va="center", fontsize=9)
    left.add_patch(Rectangle((0, q_len - 1), k_len, 1, fill=False, edgecolor=HIGHLIGHT_EDGE, linewidth=2))
    left.set(xlim=(0, k_len), ylim=(q_len, 0), xlabel="key position", ylabel="query position", aspect="auto")
    left.set_title(f"scores {q_len} × {k_len}, computed {block_size} keys at a time", fontsize=10)
    left.grid(False)
    steps = np.arange(1, blocks + 1)
    rescaled = denom * np.exp(m - m[-1])  # each step's denominator, measured against the final maximum
    right.plot(steps, m, "o-", label="running max m")
    right.plot(steps, rescaled, "s-", label="denominator (rescaled to the final m)")
    right.axhline(m[-1], ls="--", c="C0", lw=0.8)
    right.axhline(rescaled[-1], ls="--", c="C1", lw=0.8)
    right.set(xlabel="tiles of keys seen", ylabel="value", xticks=steps)
    right.set_title("the highlighted query's running state", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle("Online softmax: attention one tile of keys at a time", fontweight="bold", fontsize=12)
    return fig


# ---------------------------------------------------------------------------------------------
# Figures of chapters 5 and 6: splitting heads, placing the LayerNorm
# ---------------------------------------------------------------------------------------------


def _draw_cells(ax: Any, cells: list[tuple[float, float, int, str]], title: str, rows: list[tuple[float, str]]) -> None:
    """Unit squares at ``(x, y)`` coloured by head, each with a label; ``rows`` are the y tick labels."""
    from matplotlib.patches import Rectangle

    for x, y, head, text in cells:
        ax.add_patch(Rectangle((x, y), 1, 1, facecolor=f"C{head % 10}", alpha=0.45, edgecolor="k", linewidth=0.8))
        ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=8)
    ax.set_xlim(-0.3, max(x for x, _, _, _ in cells) + 1.3)
    ax.set_ylim(max(y for _, y, _, _ in cells) + 1.2, -0.2)
    ax.set_yticks([y + 0.5 for y, _ in rows], [label for _, label in rows], fontsize=8)
    ax.set_xticks([])
    ax.set_title(title, fontsize=9.5)
    ax.set_aspect("equal")
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def split_merge_heads_figure(seq_len: int = 3, d_model: int = 8, num_heads: int = 2) -> "Figure":
    """``split_heads`` and ``merge_heads`` as a picture: a reshape (``view``) and a ``transpose``, then back.

    One sentence of the batch, ``seq_len`` tokens of ``d_model`` features; each cell shows its feature
    index and is coloured by the head that owns it (``feature // d_k``). The ``view`` only groups the
    features of every token into ``num_heads`` slices of ``d_k``; the ``transpose`` puts the head axis in
    front of the sequence, so that each head holds all tokens; ``merge_heads`` undoes both steps.
    """
    from matplotlib.figure import Figure

    sizes = {"seq_len": seq_len, "d_model": d_model, "num_heads": num_heads}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    d_k, gap = d_model // num_heads, 0.5
    tokens = [(t, f"token {t}") for t in range(seq_len)]
    flat = [(f, t, f // d_k, str(f)) for t in range(seq_len) for f in range(d_model)]
    grouped = [(f + (f // d_k) * gap, t, f // d_k, str(f)) for t in range(seq_len) for f in range(d_model)]
    by_head = [
        (f % d_k, (f // d_k) * (seq_len + gap) + t, f // d_k, str(f)) for t in range(seq_len) for f in range(d_model)
    ]
    head_rows = [(h * (seq_len + gap) + t, f"head {h}, token {t}") for h in range(num_heads) for t in range(seq_len)]
    fig = Figure(figsize=(13, 1.4 + 0.36 * num_heads * (seq_len + gap)), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[d_model, d_model + (num_heads - 1) * gap, d_k, d_model])
    panels = [
        (flat, "x: (batch, seq, d_model)", tokens),
        (grouped, ".view(batch, seq, h, d_k)", tokens),
        (by_head, ".transpose(1, 2): (batch, h, seq, d_k)", head_rows),
        (flat, "merge: .transpose(1, 2).reshape\n(batch, seq, d_model) again", tokens),
    ]
    for ax, (cells, title, rows) in zip(axes, panels):
        _draw_cells(ax, cells, title, rows)
    fig.suptitle(
        f"split_heads and merge_heads: seq = {seq_len}, d_model = {d_model}, h = {num_heads}, d_k = {d_k} "
        "(numbers: feature index; colour: head)",
        fontweight="bold",
        fontsize=11,
    )
    return fig


# Each wiring from input (bottom) to output (top); "+" is the residual sum, fed by the input.
_LAYER_NORM_WIRINGS = {
    "post-LN": ("x", "Sublayer", "+", "LayerNorm", "output"),
    "pre-LN": ("x", "LayerNorm", "Sublayer", "+", "output"),
}
_WIRING_FORMULA = {"post-LN": "LayerNorm(x + Sublayer(x))", "pre-LN": "x + Sublayer(LayerNorm(x))"}
_NODE_FACE = {"x": _FACE["io"], "output": _FACE["io"], "Sublayer": _FACE["attn"], "LayerNorm": _FACE["norm"]}


def _draw_wiring(ax: Any, name: str) -> None:
    """One wiring of Add & Norm as a column of boxes, with the residual path drawn in red on the right."""
    from matplotlib.patches import Circle, FancyBboxPatch

    nodes = _LAYER_NORM_WIRINGS[name]
    plus = nodes.index("+")
    for i, label in enumerate(nodes):
        y = 2.0 * i
        if label == "+":
            ax.add_patch(Circle((0, y), 0.45, facecolor="white", edgecolor=_EDGE, linewidth=1.4))
        else:
            box = FancyBboxPatch((-1.6, y - 0.5), 3.2, 1.0, boxstyle="round,pad=0.05", facecolor=_NODE_FACE[label])
            ax.add_patch(box)
        ax.text(0, y, label, ha="center", va="center", fontsize=11)
        if i:  # main path: an arrow up from the previous node
            top = y - (0.45 if label == "+" else 0.55)
            ax.annotate("", (0, top), (0, 2.0 * (i - 1) + 0.55), arrowprops={"arrowstyle": "->"})
    y_plus = 2.0 * plus
    ax.plot([1.6, 2.4, 2.4], [0, 0, y_plus], color=HIGHLIGHT_EDGE, linewidth=2)
    ax.annotate("", (0.45, y_plus), (2.4, y_plus), arrowprops={"arrowstyle": "->", "color": HIGHLIGHT_EDGE, "lw": 2})
    ax.text(2.55, y_plus / 2, "residual", rotation=90, va="center", color=HIGHLIGHT_EDGE, fontsize=9)
    ax.set(xlim=(-2.2, 3.2), ylim=(-1, 2.0 * len(nodes) - 1), aspect="equal")
    ax.set_title(f"{name}\n{_WIRING_FORMULA[name]}", fontsize=11)
    ax.axis("off")


def layer_norm_placement_figure(placements: Sequence[str] = ("post-LN", "pre-LN")) -> "Figure":
    """Add & Norm wired post-LN (the paper: add, then LayerNorm) and pre-LN (LayerNorm first), side by side.

    Each panel is one sub-layer from its input ``x`` (bottom) to its output (top); the residual path is
    red. In post-LN the residual sum goes through the LayerNorm; in pre-LN it reaches the output untouched.
    """
    from matplotlib.figure import Figure

    if isinstance(placements, str) or not placements:
        raise ValueError(f"placements must be a non-empty sequence of names, got {placements!r}")
    unknown = [p for p in placements if p not in _LAYER_NORM_WIRINGS]
    if unknown:
        raise ValueError(f"unknown placement(s) {unknown}: choose from {sorted(_LAYER_NORM_WIRINGS)}")
    fig = Figure(figsize=(3.6 * len(placements), 5.2), layout="constrained")
    for ax, name in zip(np.atleast_1d(fig.subplots(1, len(placements))), placements):
        _draw_wiring(ax, name)
    fig.suptitle("Where the LayerNorm sits in Add & Norm", fontweight="bold", fontsize=12)
    return fig


# ---------------------------------------------------------------------------------------------
# Figures of chapters 7 to 9: the shifted target, the growing key/value cache, a beam-search tree
# ---------------------------------------------------------------------------------------------


def _token_box(ax: Any, x: float, y: float, text: str, **style: Any) -> Any:
    """One token drawn as a rounded box centred at ``(x, y)``; returns the text artist."""
    box = {"boxstyle": "round,pad=0.35", "facecolor": style.pop("facecolor", "#e3eefa"), "edgecolor": "k"}
    box.update(style.pop("box", {}))
    return ax.text(x, y, text, ha="center", va="center", fontsize=style.pop("fontsize", 10), bbox=box, **style)


def shifted_target_figure(target: Sequence[str], bos: str = "<bos>", eos: str = "<eos>") -> "Figure":
    """Teacher forcing's two copies of one target sentence ``y_1 … y_n``, shifted by one position.

    Top row: the decoder input ``bos y_1 … y_n``; bottom row: the labels ``y_1 … y_n eos``; one column
    per position ``t = 0 … n``. A solid arrow says "position t must predict this label"; a dashed
    arrow shows that the label of position t is the input of position t + 1.
    """
    from matplotlib.figure import Figure

    if isinstance(target, str) or not isinstance(target, Sequence) or not target:
        raise ValueError(f"target must be a non-empty list of token strings, got {target!r}")
    if not all(isinstance(t, str) for t in (*target, bos, eos)):
        raise ValueError(f"target, bos and eos must be strings, got {list(target)!r}, {bos!r}, {eos!r}")
    inputs, labels = [bos, *target], [*target, eos]
    fig = Figure(figsize=(1.45 * len(inputs) + 2.2, 3.0), layout="constrained")
    ax = fig.subplots()
    for t, (x_in, y_out) in enumerate(zip(inputs, labels)):
        ax.text(t, 1.55, f"t = {t}", ha="center", va="center", fontsize=9, color=_GREY)
        _token_box(ax, t, 1.0, x_in)
        _token_box(ax, t, 0.0, y_out, facecolor="#fde7c8")
        ax.annotate("", (t, 0.22), (t, 0.78), arrowprops={"arrowstyle": "-|>", "color": "k", "lw": 1.2})
        if t + 1 < len(inputs):  # the label of t is fed as the input of t + 1
            style = {"arrowstyle": "-|>", "color": HIGHLIGHT_EDGE, "lw": 1.0, "ls": "--"}
            ax.annotate("", (t + 0.8, 0.8), (t + 0.2, 0.2), arrowprops=style)
    ax.text(-0.7, 1.0, "decoder input", ha="right", va="center", fontsize=10, weight="bold")
    ax.text(-0.7, 0.0, "label (to predict)", ha="right", va="center", fontsize=10, weight="bold")
    ax.set(xlim=(-2.9, len(inputs) - 0.4), ylim=(-0.45, 1.8))
    ax.axis("off")
    ax.set_title("Teacher forcing: position t sees the inputs 0 … t and must predict the next token", fontsize=11)
    ax.text(-0.7, -0.4, "dashed: the label of position t is the input of position t + 1", fontsize=9, color=_GREY)
    return fig


def _cached_tensors(tensors: Sequence[Any], name: str) -> list[np.ndarray]:
    """Step s's cached tensor as a ``(s + 1, d_k)`` array, every step with the same ``d_k``."""
    if isinstance(tensors, str) or not isinstance(tensors, Sequence) or not tensors:
        raise ValueError(f"{name} must be a non-empty list with one cached tensor per decoding step")
    arrays = [_as_array(t, f"{name}[{s}]") for s, t in enumerate(tensors)]
    for s, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] != s + 1 or a.shape[1] != arrays[0].shape[1] or a.shape[1] == 0:
            raise ValueError(
                f"{name}[{s}] must have shape (positions={s + 1}, d_k) with the d_k of step 0, got {a.shape}"
            )
    return arrays


def kv_cache_figure(keys: Sequence[Any], values: Sequence[Any], tokens: Sequence[str]) -> "Figure":
    """The self-attention cache of one head after each decoding step: one more column per step.

    ``keys[s]`` and ``values[s]`` are the cached keys and values ``(s + 1, d_k)`` after step ``s + 1``
    (e.g. ``cache.self_keys[layer][sentence, head]``), ``tokens[s]`` the token fed at that step.
    Each panel shows the tensor transposed, ``d_k`` rows by one column per position; the newest
    column is outlined. One colour scale for all panels, so an unchanged column looks the same.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    k_arrays, v_arrays = _cached_tensors(keys, "keys"), _cached_tensors(values, "values")
    steps = len(k_arrays)
    if len(v_arrays) != steps or isinstance(tokens, str) or len(tokens) != steps:
        raise ValueError(
            f"need as many values and tokens as keys ({steps} steps), got {len(v_arrays)} values and tokens {tokens!r}"
        )
    if steps > 12:
        raise ValueError(f"at most 12 steps fit in one figure, got {steps}")
    fig = Figure(figsize=(2.5 + 0.5 * steps * (steps + 1) / 2, 5.4), layout="constrained")
    axes = fig.subplots(2, steps, width_ratios=list(range(1, steps + 1)), squeeze=False)
    for row, (arrays, name) in enumerate(((k_arrays, "keys"), (v_arrays, "values"))):
        limit = max(float(np.abs(a).max()) for a in arrays) or 1.0
        for s, (ax, a) in enumerate(zip(axes[row], arrays)):
            image = ax.imshow(a.T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            ax.add_patch(Rectangle((s - 0.5, -0.5), 1, a.shape[1], fill=False, edgecolor="k", linewidth=2.5))
            ax.set_xticks(range(s + 1), [str(t) for t in tokens[: s + 1]], rotation=90, fontsize=8)
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(f"step {s + 1}" if row == 0 else "", fontsize=9)
        axes[row][0].set_ylabel(f"cached {name}\n(d_k = {arrays[0].shape[1]} rows)")
        fig.colorbar(image, ax=list(axes[row]), shrink=0.8, pad=0.01)
    fig.suptitle("The key/value cache grows by one column per step; old columns never change", fontweight="bold")
    return fig


def _beam_levels(levels: Sequence[Sequence[tuple]]) -> list[list[tuple[int, str, float, bool]]]:
    """Check the candidates of each step: ``(parent, token, score, kept)``, parents kept at the step before."""
    if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
        raise ValueError("levels must be a non-empty list with one list of candidates per step")
    checked: list[list[tuple[int, str, float, bool]]] = []
    for step, level in enumerate(levels):
        if isinstance(level, str) or not isinstance(level, Sequence) or not level:
            raise ValueError(f"levels[{step}] must be a non-empty list of (parent, token, score, kept) tuples")
        rows = []
        for j, candidate in enumerate(level):
            if not isinstance(candidate, Sequence) or len(candidate) != 4:
                raise ValueError(f"levels[{step}][{j}] must be a (parent, token, score, kept) tuple, got {candidate!r}")
            parent, token, score, kept = candidate
            parents_kept = [True] if step == 0 else [c[3] for c in checked[-1]]
            if not isinstance(parent, (int, np.integer)) or not 0 <= parent < len(parents_kept):
                raise ValueError(f"levels[{step}][{j}]: parent {parent!r} is not a candidate of the step before")
            if not parents_kept[parent]:
                raise ValueError(f"levels[{step}][{j}]: parent {parent} was pruned, it cannot be extended")
            rows.append((int(parent), str(token), float(score), bool(kept)))
        checked.append(rows)
    return checked


def beam_search_tree_figure(levels: Sequence[Sequence[tuple]], root: str = "<bos>", eos: str = "<eos>") -> "Figure":
    """A small beam-search tree: at every step the candidates, the ``k`` kept and the pruned ones.

    ``levels[s]`` lists the candidates of step ``s + 1`` as ``(parent, token, score, kept)``:
    ``parent`` indexes the candidates of the step before (``0``, the root, at the first step) and
    must have been kept, ``score`` is the candidate's log-probability, ``kept`` whether it stays in
    the beam (a kept ``eos`` is a finished hypothesis). Kept candidates are drawn in colour,
    pruned ones grey and dashed.
    """
    from matplotlib.figure import Figure

    checked = _beam_levels(levels)
    tallest = max(len(level) for level in checked)
    fig = Figure(figsize=(2.3 * (len(checked) + 1) + 0.5, 0.62 * tallest + 1.6), layout="constrained")
    ax = fig.subplots()
    ys = [[(tallest - 1) / 2]]  # the root sits in the middle
    boxes = [[_token_box(ax, 0, ys[0][0], root)]]
    for step, level in enumerate(checked, start=1):
        order = sorted(range(len(level)), key=lambda j: (level[j][0], -level[j][2]))  # grouped by parent
        offset = (tallest - len(level)) / 2
        y_of = {j: offset + rank for rank, j in enumerate(order)}
        ys.append([y_of[j] for j in range(len(level))])
        boxes.append([])
        for j, (parent, token, score, kept) in enumerate(level):
            finished = kept and token == eos
            face = "#d7f0d7" if finished else "#e3eefa" if kept else "white"
            edge, ls = ("#2e7d32" if finished else "k", "-") if kept else ("#aaaaaa", "--")
            style = {"facecolor": face, "fontsize": 9, "color": "k" if kept else "#888888"}
            style["box"] = {"edgecolor": edge, "linestyle": ls}
            box = _token_box(ax, step, ys[step][j], f"{token}  {score:.2f}", **style)
            boxes[step].append(box)
            line = {"arrowstyle": "-", "color": "k" if kept else "#aaaaaa", "lw": 1.3 if kept else 0.9, "ls": ls}
            parent_box = boxes[step - 1][parent]
            ax.annotate("", (0, 0.5), (1, 0.5), box, parent_box, arrowprops={**line, "shrinkA": 6, "shrinkB": 6})
        ax.text(step, -0.9, f"step {step}", ha="center", fontsize=9, color=_GREY)
    ax.set(xlim=(-0.6, len(checked) + 0.6), ylim=(tallest - 0.4, -1.3))
    ax.axis("off")
    ax.set_title("Beam search: kept candidates (colour) and pruned ones (grey); score = log P", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# Figures of chapters 1 and 2: how far a stack of layers reaches, the shapes of softmax(Q Kᵀ) V
# ---------------------------------------------------------------------------------------------


def _checked_reach(reach: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``name -> (layers, n)`` boolean tables, all for the same ``n``; a clear error otherwise."""
    if not isinstance(reach, Mapping) or not reach:
        raise ValueError(f"reach must be a non-empty mapping name -> (layers, n) boolean table, got {reach!r}")
    tables = {}
    for name, table in reach.items():
        array = _as_array(table, f"reach[{name!r}]")
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"reach[{name!r}] must be a non-empty (layers, n) table, got shape {array.shape}")
        if array.dtype != bool:
            raise ValueError(f"reach[{name!r}] must be boolean (True = the last output depends on that input)")
        tables[str(name)] = array
    widths = {table.shape[1] for table in tables.values()}
    if len(widths) > 1:
        raise ValueError(f"every table in reach must cover the same n input positions, got n in {sorted(widths)}")
    return tables


def receptive_field_figure(reach: Mapping[str, Any]) -> "Figure":
    """Which inputs the last output depends on, layer after layer, for several kinds of layer stacks.

    ``reach[name]`` is a boolean ``(layers, n)`` table: row ``l`` marks the input positions
    ``1 .. n`` on which output ``n`` depends after ``l + 1`` layers (for a recurrence: sweeps).
    One panel per stack, one row per layer, panels stacked with heights proportional to their
    number of layers; a panel's title says after how many layers (if any) input 1 is reached.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    tables = _checked_reach(reach)
    n = next(iter(tables.values())).shape[1]
    heights = [table.shape[0] + 2.5 for table in tables.values()]  # room for each panel's title
    fig = Figure(figsize=(min(2.0 + 0.42 * n, 13.0), 0.9 + 0.19 * sum(heights)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(tables), 1, height_ratios=heights))
    for ax, (name, table) in zip(axes, tables.items()):
        layers = table.shape[0]
        ax.imshow(table, cmap=ListedColormap(["#f1f1f1", "#f0a04b"]), vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n), [str(j + 1) if j in (0, n - 1) or (j + 1) % 4 == 0 else "" for j in range(n)])
        rows = sorted({0, layers - 1} | set(range(3, layers, 4)))
        ax.set_yticks(rows, [str(r + 1) for r in rows])
        ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(layers + 1) - 0.5, minor=True)
        ax.grid(False)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        reached = np.flatnonzero(table[:, 0])
        depth = int(reached[0]) + 1 if reached.size else 0
        verdict = f"input 1 reached after {depth} layer{'s' if depth > 1 else ''}" if depth else "input 1 not reached"
        ax.set_title(f"{name}: {verdict}", fontsize=10, loc="left")
        ax.set_ylabel("layer", fontsize=9)
    axes[-1].set_xlabel(f"input position (output {n} is the one followed)")
    fig.suptitle(f"Which inputs output {n} depends on, layer after layer", fontweight="bold", fontsize=12)
    return fig


_BLUE = "#1f5fbf"


def _draw_matrix(ax: Any, x: float, rows: int, cols: int, name: str, face: str) -> None:
    """A ``rows x cols`` grid of unit cells with its top-left corner at ``(x, 0)``, named below."""
    from matplotlib.patches import Rectangle

    for r in range(rows):
        for c in range(cols):
            ax.add_patch(Rectangle((x + c, r), 1, 1, facecolor=face, edgecolor="#555555", linewidth=0.8))
    ax.text(x + cols / 2, rows + 0.5, name, ha="center", va="top", fontsize=11)


def attention_shapes_figure(q_len: int = 3, k_len: int = 5, d_k: int = 4, d_v: int = 2) -> "Figure":
    """softmax(Q Kᵀ / sqrt(d_k)) V drawn as blocks of cells, one cell per number, with every shape named.

    ``Q`` ``(q_len, d_k)`` times ``Kᵀ`` ``(d_k, k_len)`` gives the scores ``(q_len, k_len)``; the
    softmax runs along each row; the weights times ``V`` ``(k_len, d_v)`` give ``(q_len, d_v)``.
    Red: query 1, key 2 and the score they make. Blue: row 1 of the weights and the output row it
    mixes from all of ``V``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    sizes = {"q_len": q_len, "k_len": k_len, "d_k": d_k, "d_v": d_v}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 12:
            raise ValueError(f"{name} must be an integer from 1 to 12 (one drawn cell per number), got {value!r}")
    blocks = [  # name, rows, columns, colour; the operator drawn after the block
        (f"Q\n({q_len} × {d_k})", q_len, d_k, _FACE["attn"], "×"),
        (f"Kᵀ\n({d_k} × {k_len})", d_k, k_len, _FACE["attn"], "="),
        (f"Q Kᵀ: scores\n({q_len} × {k_len})", q_len, k_len, _FACE["core"], "softmax(· / √d_k)\nalong each row"),
        (f"weights A\n({q_len} × {k_len})", q_len, k_len, _FACE["core"], "×"),
        (f"V\n({k_len} × {d_v})", k_len, d_v, _FACE["ffn"], "="),
        (f"A V: output\n({q_len} × {d_v})", q_len, d_v, _FACE["io"], ""),
    ]
    fig = Figure(figsize=(13, 1.6 + 0.42 * max(q_len, k_len, d_k)), layout="constrained")
    ax = fig.subplots()
    x, left = 0.0, []  # left: the x of each block's left edge
    for name, rows, cols, face, operator in blocks:
        _draw_matrix(ax, x, rows, cols, name, face)
        left.append(x)
        x += cols
        gap = 3.4 if len(operator) > 1 else 1.6
        ax.text(x + gap / 2, max(q_len, d_k) / 2, operator, ha="center", va="center", fontsize=9 if gap > 2 else 14)
        x += gap if operator else 0
    key = min(1, k_len - 1)  # key 2 (key 1 if there is only one)
    outlines = [  # (block, x offset, y offset, width, height, colour)
        (0, 0, 0, d_k, 1, HIGHLIGHT_EDGE),  # query 1: a row of Q
        (1, key, 0, 1, d_k, HIGHLIGHT_EDGE),  # key 2: a column of Kᵀ
        (2, key, 0, 1, 1, HIGHLIGHT_EDGE),  # their score
        (3, 0, 0, k_len, 1, _BLUE),  # the weights of query 1
        (4, 0, 0, d_v, k_len, _BLUE),  # every value
        (5, 0, 0, d_v, 1, _BLUE),  # the output row of query 1
    ]
    for block, dx, dy, width, height, colour in outlines:
        ax.add_patch(Rectangle((left[block] + dx, dy), width, height, fill=False, edgecolor=colour, linewidth=2.5))
    ax.set(xlim=(-0.5, x + 0.5), ylim=(max(q_len, k_len, d_k) + 2.2, -0.5), aspect="equal")
    ax.axis("off")
    ax.set_title(
        "softmax(Q Kᵀ / √d_k) V, one cell per number. Red: query 1 · key 2 = one score. "
        "Blue: one row of weights mixes all of V into one output row",
        fontsize=10,
    )
    return fig
