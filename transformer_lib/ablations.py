"""Chapter 11 — ablations: which of the paper's training choices matter at this scale?

Each ablation changes one setting of a base ``TrainConfig`` (``ABLATIONS``). Most are fields the
earlier chapters already have (``norm_first``, ``positional``, ``label_smoothing``, ``N``); the one
this chapter adds is a learning-rate schedule without warmup, registered here as
``SCHEDULES["noam_no_warmup"]``: the same peak rate as ``noam_lr``, reached at step 1, and the same
inverse-square-root decay after it. ``stability`` turns a run's losses and gradient norms into the
numbers the chapter compares. ``benchmarks/ablations.py`` runs the sweep.
"""

from __future__ import annotations

import math

from .train import SCHEDULES

__all__ = ["noam_lr_no_warmup", "ABLATIONS", "SMOOTH", "SPIKE_NATS", "stability"]


def noam_lr_no_warmup(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """``noam_lr`` without its linear ramp: lr = factor * d_model^-0.5 * min(step^-0.5, warmup^-0.5).

    The peak ``factor * (d_model * warmup)^-0.5`` from step 1 until step ``warmup``, then the same decay.
    """
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, warmup**-0.5)


SCHEDULES["noam_no_warmup"] = lambda step, c: noam_lr_no_warmup(step, c.d_model, c.warmup, c.lr_factor)

# One changed setting per run, relative to the base configuration: (description, changes).
ABLATIONS: dict[str, tuple[str, dict]] = {
    "base": ("pre-LN, warmup, sinusoidal, smoothing 0.1, N=3", {}),
    "post_ln": ("post-LN (the paper), warmup", {"norm_first": False}),
    "post_ln_no_warmup": ("post-LN, no warmup (same peak lr)", {"norm_first": False, "schedule": "noam_no_warmup"}),
    "pre_ln_no_warmup": ("pre-LN, no warmup (same peak lr)", {"schedule": "noam_no_warmup"}),
    "learned_positions": ("learned positions", {"positional": "learned"}),
    "no_label_smoothing": ("label smoothing 0", {"label_smoothing": 0.0}),
    "layers_6": ("N=6 layers", {"N": 6}),
}

SMOOTH = 20  # steps in the moving average of the training loss that "stability" looks at
SPIKE_NATS = 0.5  # a rise of the smoothed loss this far above its best so far counts as a spike


def stability(losses: list[float], log: list[dict], clip_norm: float) -> dict:
    """Measurable (in)stability of one run.

    * ``max_loss_rise``: the largest rise, in nats, of the ``SMOOTH``-step moving average of the
      training loss above its lowest value so far (0 for a loss that only falls);
    * ``spike_steps``: how many steps that rise exceeded ``SPIKE_NATS``;
    * ``grad_norm_max``: the largest gradient norm (before clipping) of any step; and
      ``clipped_windows``: the share of logged windows whose mean gradient norm exceeded ``clip_norm``.
    """
    windows = [losses[max(0, i - SMOOTH + 1) : i + 1] for i in range(len(losses))]
    smoothed = [sum(w) / len(w) for w in windows]
    best, rise, spikes = math.inf, 0.0, 0
    for value in smoothed:
        best = min(best, value)
        rise = max(rise, value - best)
        spikes += value - best > SPIKE_NATS
    logged = [r for r in log if "grad_norm" in r]
    return {
        "max_loss_rise": round(rise, 4),
        "spike_steps": spikes,
        "grad_norm_max": round(max((r["grad_norm_max"] for r in logged), default=float("nan")), 3),
        "clipped_windows": round(sum(r["grad_norm"] > clip_norm for r in logged) / max(len(logged), 1), 3),
    }
