"""transformer_lib — the library of "The Transformer, built chapter by chapter".

Each chapter of the book adds one module; this file exposes their public names in chapter order.
The modules of chapters 1–9 are imported at once; the heavier or optional ones — the figures and
explorers (``viz``), the benchmarks (``bench``) and tiled attention (``flash``), data parallelism
(``distributed``), the ablations, the Chinese track (``chinese``), the language models (``lm``) and
the refinements since 2017 (``modern``) — are imported the first time one of their names is used.
Submodules keep their own names: ``transformer_lib.train`` is the module of chapter 8, whose
``train`` function is ``transformer_lib.train.train``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Chapter 1 — why attention: the course toolkit and the RNN baseline
# Chapter 2 — attention as queries, keys and values
from .attention import Attention, scaled_dot_product_attention
from .checkpoint import CHECKPOINT_FORMAT, load_translator, read_checkpoint, release_checkpoint, save_checkpoint

# Chapter 8 — training a translator
from .data import (
    CORPORA,
    MULTI30K_FILES,
    MULTI30K_SPLITS,
    Corpus,
    DataError,
    RemoteFile,
    collate,
    fetch,
    load_multi30k,
    load_pairs,
    register_corpus,
    token_batches,
    use_shared_mirror,
)

# Chapter 9 — decoding and evaluation
from .decode import KVCache, beam_search, decode_step, gnmt_length_penalty, greedy_search, make_decoder, score_sequences

# Chapter 7 — the decoder and the whole model
from .decoder import Decoder, DecoderLayer

# Chapter 3 — inputs: embeddings and positional encoding
from .embeddings import Embeddings, LearnedPositionalEmbedding, PositionalEncoding, sinusoidal_positional_encoding

# Chapter 6 — the encoder
from .encoder import Encoder, EncoderLayer, PositionwiseFeedForward, SublayerConnection
from .evaluate import corpus_scores, device_description, plot_training_log, translate

# Chapter 4 — masking
from .masks import causal_mask, padding_mask, target_mask
from .model import Generator, Transformer, TransformerConfig, greedy_decode, make_model

# Chapter 5 — multi-head attention
from .multihead import MultiHeadAttention, fused_attention, keep_attention_weights, merge_heads, split_heads
from .rnn import AdditiveAttention, RNNDecoder, RNNEncoder, Seq2Seq, make_seq2seq
from .tokenizer import UNK_ID, Tokenizer, train_tokenizer
from .train import (
    PRESETS,
    SCHEDULES,
    PreparedData,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    autocast_dtype,
    clip_and_step,
    cpu_has_bf16,
    evaluate_loss,
    grad_scaler,
    label_smoothed_loss,
    mixed_precision,
    noam_lr,
    prepare_data,
    train_step,
)
from .utils import (
    BOS_ID,
    EOS_ID,
    FIRST_SYMBOL_ID,
    PAD_ID,
    REPOSITORY,
    cache_dir,
    make_sequence_task,
    remove_stale_parts,
    repo_file,
    repo_root,
    resolve_device,
    set_seed,
    sha256_file,
    show_source,
    time_it,
    use_course_style,
    write_atomic,
)

# Loaded on first use: module -> its public names.
_LAZY = {
    "viz": [  # chapter 1's figures and explorers (matplotlib, ipywidgets)
        "CHAPTERS_ON_THE_MAP",
        "Explorer",
        "architecture_figure",
        "attention_explorer",
        "mask_explorer",
        "positional_encoding_explorer",
        "tiled_attention_figure",
        "split_merge_heads_figure",  # chapters 5-6
        "layer_norm_placement_figure",
        "shifted_target_figure",  # chapters 7-9
        "kv_cache_figure",
        "beam_search_tree_figure",
        "receptive_field_figure",  # chapter 1
        "attention_shapes_figure",  # chapter 2
    ],
    "bench": [  # chapter 10
        "KNOWN_PEAK_TFLOPS",
        "TensorMemoryTracker",
        "Timing",
        "benchmark",
        "format_table",
        "gpu_peak_flops",
        "matmul_peak_flops",
        "mfu",
        "peak_memory",
        "results_header",
        "transformer_flops",
        "write_json_atomic",
    ],
    "flash": ["tiled_attention"],  # chapter 10
    "export": ["DecoderStepGraph", "EncoderGraph", "export_onnx", "greedy_translate_onnx", "onnx_sessions"],  # ch. 10
    "distributed": ["DistributedTrainer", "accumulated_step", "distributed_env", "train_parallel"],  # chapter 11
    "ablations": ["ABLATIONS", "SMOOTH", "SPIKE_NATS", "noam_lr_no_warmup", "stability"],  # chapter 11
    "chinese": [  # chapter 12
        "TATOEBA_FILE",
        "load_tatoeba",
        "CJK_FONT_FAMILIES",
        "SEED_SENTENCES",
        "AttentionMap",
        "SeedSentence",
        "add_seed_translations",
        "cross_attention",
        "find_cjk_font",
        "plot_cross_attention",
        "translate_seed_sentences",
        "use_cjk_font",
    ],
    "lm": [  # chapter 13
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
    ],
    "modern": [  # chapter 14
        "RMSNorm",
        "swiglu_hidden",
        "SwiGLU",
        "rotary_angles",
        "RotaryEmbedding",
        "GroupedQueryAttention",
        "ModernConfig",
        "ModernLM",
        "cache_bytes",
        "REFINEMENTS",
    ],
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "FIRST_SYMBOL_ID",
    "PAD_ID",
    "REPOSITORY",
    "cache_dir",
    "make_sequence_task",
    "remove_stale_parts",
    "repo_file",
    "repo_root",
    "resolve_device",
    "set_seed",
    "sha256_file",
    "show_source",
    "time_it",
    "use_course_style",
    "write_atomic",
    "AdditiveAttention",
    "RNNDecoder",
    "RNNEncoder",
    "Seq2Seq",
    "make_seq2seq",
    "Attention",
    "scaled_dot_product_attention",
    "Embeddings",
    "LearnedPositionalEmbedding",
    "PositionalEncoding",
    "sinusoidal_positional_encoding",
    "causal_mask",
    "padding_mask",
    "target_mask",
    "MultiHeadAttention",
    "fused_attention",
    "keep_attention_weights",
    "merge_heads",
    "split_heads",
    "Encoder",
    "EncoderLayer",
    "PositionwiseFeedForward",
    "SublayerConnection",
    "Decoder",
    "DecoderLayer",
    "Generator",
    "Transformer",
    "TransformerConfig",
    "greedy_decode",
    "make_model",
    "CORPORA",
    "MULTI30K_FILES",
    "MULTI30K_SPLITS",
    "Corpus",
    "DataError",
    "RemoteFile",
    "collate",
    "fetch",
    "load_multi30k",
    "load_pairs",
    "register_corpus",
    "token_batches",
    "use_shared_mirror",
    "UNK_ID",
    "Tokenizer",
    "train_tokenizer",
    "CHECKPOINT_FORMAT",
    "load_translator",
    "read_checkpoint",
    "release_checkpoint",
    "save_checkpoint",
    "PRESETS",
    "SCHEDULES",
    "PreparedData",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "autocast_dtype",
    "clip_and_step",
    "cpu_has_bf16",
    "evaluate_loss",
    "grad_scaler",
    "label_smoothed_loss",
    "mixed_precision",
    "noam_lr",
    "prepare_data",
    "train_step",
    "KVCache",
    "beam_search",
    "decode_step",
    "gnmt_length_penalty",
    "greedy_search",
    "make_decoder",
    "score_sequences",
    "corpus_scores",
    "device_description",
    "plot_training_log",
    "translate",
]
__all__ += [name for names in _LAZY.values() for name in names]


def __getattr__(name: str) -> Any:
    """Import a lazy module the first time one of its names (or the module itself) is asked for."""
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_LAZY))
