"""Which precision a training step uses, by device and by what the hardware offers (capabilities faked)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from transformer_lib import Transformer, TransformerConfig
from transformer_lib.train import (
    TrainConfig,
    TrainingDiverged,
    autocast_dtype,
    clip_and_step,
    cpu_has_bf16,
    grad_scaler,
    mixed_precision,
    train_step,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def fake_cpu(monkeypatch, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


def test_a_cpu_without_bf16_instructions_trains_in_float32(monkeypatch):
    fake_cpu(monkeypatch, avx512_bf16=False)
    assert not cpu_has_bf16()
    assert autocast_dtype(CPU, bf16=True) is None
    assert isinstance(mixed_precision(CPU, bf16=True), contextlib.nullcontext)
    assert grad_scaler(CPU, bf16=True) is None


@pytest.mark.parametrize("avx512_bf16, amx", [(True, False), (False, True)])
def test_a_cpu_with_avx512_bf16_or_amx_autocasts_to_bf16(monkeypatch, avx512_bf16, amx):
    fake_cpu(monkeypatch, avx512_bf16, amx)
    assert cpu_has_bf16()
    assert autocast_dtype(CPU, bf16=True) == torch.bfloat16
    context = mixed_precision(CPU, bf16=True)
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert grad_scaler(CPU, bf16=True) is None  # bf16 has float32's exponent range: no loss scaling
    with context:
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16


def test_bf16_false_means_float32_everywhere(monkeypatch):
    fake_cpu(monkeypatch, avx512_bf16=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(CPU, bf16=False) is None and autocast_dtype(CUDA, bf16=False) is None


def test_a_gpu_with_bf16_uses_it_without_a_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(CUDA, bf16=True) == torch.bfloat16
    assert grad_scaler(CUDA, bf16=True) is None


def test_a_gpu_without_bf16_uses_float16_with_a_loss_scaler(monkeypatch):
    """Colab's free T4: no bf16, so float16 autocast, whose small gradients need loss scaling."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(CUDA, bf16=True) == torch.float16
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        scaler = grad_scaler(CUDA, bf16=True)  # without CUDA, PyTorch warns and disables the scaler
    assert isinstance(scaler, torch.amp.GradScaler)


def tiny_batch():
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab=20, tgt_vocab=20, N=1, d_model=16, d_ff=32, h=2, dropout=0.0)
    model = Transformer(config)
    src = torch.randint(4, 20, (3, 5))
    tgt = torch.randint(4, 20, (3, 6))
    return model, (src, tgt[:, :-1], tgt[:, 1:])


def test_train_step_with_a_loss_scaler_updates_the_weights_as_without_one():
    """A float16 scaler only multiplies the loss and divides the gradients again: the step is the same."""
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model, batch = tiny_batch()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss, norm = train_step(model, optimizer, batch, TrainConfig(name="t"), scaler=scaler)
        results.append((loss, norm, [p.detach().clone() for p in model.parameters()]))
    (loss_a, norm_a, weights_a), (loss_b, norm_b, weights_b) = results
    assert loss_a == pytest.approx(loss_b) and norm_a == pytest.approx(norm_b, rel=1e-4)
    assert max((a - b).abs().max().item() for a, b in zip(weights_a, weights_b)) < 1e-6


def test_an_overflowed_gradient_is_skipped_with_a_scaler_and_an_error_without():
    model, batch = tiny_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    loss = model(batch[0], batch[1]).sum() * 0 + 1.0  # finite loss ...
    scaler.scale(loss).backward()
    next(model.parameters()).grad[0, 0] = float("inf")  # ... whose gradient overflowed
    before = [p.detach().clone() for p in model.parameters()]
    clip_and_step(model, optimizer, loss.detach(), TrainConfig(name="t"), scaler)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "the step must be skipped"
    assert scaler.get_scale() < 8.0, "and the scale lowered"
    with pytest.raises(TrainingDiverged, match="gradient norm became (inf|nan)"):
        clip_and_step(model, optimizer, loss.detach(), TrainConfig(name="t"))
