"""transformer_lib — the library of "The Transformer, built chapter by chapter".

Each chapter of the book adds one module; this file exposes the public names in chapter order.
"""

__version__ = "0.1.0"

# Chapter 1 — why attention: the course toolkit and the RNN baseline
from .utils import (  # noqa: F401
    BOS_ID, EOS_ID, FIRST_SYMBOL_ID, PAD_ID, make_sequence_task, set_seed, show_source, time_it, use_course_style,
    write_atomic,
)
from .rnn import AdditiveAttention, RNNDecoder, RNNEncoder, Seq2Seq, make_seq2seq
from .viz import (
    CHAPTERS_ON_THE_MAP, Explorer, architecture_figure, attention_explorer, mask_explorer, positional_encoding_explorer,
)

# Chapter 2 — attention as queries, keys and values
from .attention import Attention, scaled_dot_product_attention

# Chapter 3 — inputs: embeddings and positional encoding
from .embeddings import Embeddings, LearnedPositionalEmbedding, PositionalEncoding, sinusoidal_positional_encoding

# Chapter 4 — masking
from .masks import causal_mask, padding_mask, target_mask

# Chapter 5 — multi-head attention
from .multihead import MultiHeadAttention, merge_heads, split_heads

# Chapter 6 — the encoder
from .encoder import Encoder, EncoderLayer, PositionwiseFeedForward, SublayerConnection

# Chapter 7 — the decoder and the whole model
from .decoder import Decoder, DecoderLayer
from .model import Generator, Transformer, TransformerConfig, greedy_decode, make_model

# Chapter 8 — training a translator
from .data import MULTI30K_FILES, MULTI30K_SPLITS, TATOEBA_FILE, DataError, RemoteFile, cache_dir, fetch, load_multi30k, load_tatoeba
from .tokenizer import Tokenizer, train_tokenizer
from .data import collate, token_batches
from .train import (
    PRESETS, TrainConfig, TrainingDiverged, label_smoothed_loss, load_translator, noam_lr, prepare_data,
    release_checkpoint, save_atomic, train,
)

# Chapter 9 — decoding and evaluation
from .evaluate import corpus_scores, device_description, plot_training_log, translate
from .decode import KVCache, beam_search, decode_step, gnmt_length_penalty, greedy_search, make_decoder, score_sequences

# Chapter 10 — making it fast
from .bench import (
    KNOWN_PEAK_TFLOPS, TensorMemoryTracker, Timing, benchmark, format_table, gpu_peak_flops, matmul_peak_flops, mfu,
    peak_memory, results_header, transformer_flops, write_json_atomic,
)

# Chapter 11 — the Chinese track
from .chinese import (
    CJK_FONT_FAMILIES, SEED_SENTENCES, AttentionMap, SeedSentence, add_seed_translations, cross_attention, find_cjk_font,
    plot_cross_attention, translate_seed_sentences, use_cjk_font,
)
