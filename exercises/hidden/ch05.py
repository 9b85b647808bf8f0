"""Hidden tests for chapter 5 (only the batch grader runs them; never shown in the book or notebooks)."""

from __future__ import annotations

import torch

from transformer_lib.grading import expect_close, get_exercise
from transformer_lib.grading.ch05 import _compare, _head_message
from transformer_lib.multihead import merge_heads, split_heads


@get_exercise("05.split_heads").test("eight heads of size 1 and a batch of one", hidden=True)
def _(f):
    x = torch.arange(1 * 3 * 8, dtype=torch.float32).reshape(1, 3, 8)
    _head_message(f(x, 8), split_heads(x, 8), "split_heads(x, 8)")


@get_exercise("05.merge_heads").test("many heads, long sequences", hidden=True)
def _(f):
    x = torch.randn(2, 8, 9, 3, generator=torch.Generator().manual_seed(30))
    expect_close(f(x), merge_heads(x), "merge_heads for 8 heads", 0.0, 0.0)


@get_exercise("05.multihead").test("eight heads, cross-attention with a padding mask", hidden=True)
def _(cls):
    _compare(cls, d_model=16, heads=8, q_len=3, k_len=7, seed=31, mask="padding")


@get_exercise("05.multihead").test("one head", hidden=True)
def _(cls):
    _compare(cls, d_model=6, heads=1, q_len=4, k_len=4, seed=32)
