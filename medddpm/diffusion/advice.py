"""When sampling a checkpoint is known not to work: one plain line per reason, for ``sample`` and previews.

Two reasons, both measured (benchmarks/RESULTS.md, "Defaults"):

- EMA too young: the EMA weights still hold a large share of the first steps' weights (a network that
  has learnt nothing yet). Without warm-up, decay 0.999 keeps 0.999^(n-1) of them after n updates:
  14% at step 2000, where raw weights sampled recognisable shapes and the EMA weights noise.
- A recipe in ``KNOWN_FAILURES``: eps prediction sampled with a deterministic sampler in few steps,
  after a short run, gave noise on the toy cohort (median template correlation 0.03-0.30).
"""

from __future__ import annotations

from dataclasses import dataclass

EMA_SHARE_LIMIT = 0.05
"""Warn when the EMA weights still hold at least this share of the weights of the first step."""


def first_step_share(updates: int, decay: float, warmup: bool) -> float:
    """The weight of the first update's weights in the EMA after ``updates`` updates.

    torch's AveragedModel copies the weights at the first update and then applies e <- d_n e + (1 - d_n) w
    with d_n the decay after n updates (medddpm.training.learner.ema_decay_at), so that share is the
    product of d_1 .. d_(updates-1): decay^(updates-1) without warm-up.
    """
    if not warmup:
        return decay ** max(0, updates - 1)
    share = 1.0
    for n in range(1, updates):
        share *= min(decay, (1 + n) / (10 + n))
        if share < 1e-12:
            return 0.0
    return share


def steps_until_share(limit: float, decay: float, warmup: bool) -> int:
    """The first number of updates after which ``first_step_share`` is below ``limit``."""
    n, share = 1, 1.0
    while share >= limit:
        share *= min(decay, (1 + n) / (10 + n)) if warmup else decay
        n += 1
    return n


@dataclass(frozen=True)
class KnownFailure:
    """A (prediction, sampler, steps, training length) region where samples came out as noise."""

    prediction: str
    samplers: tuple[str, ...]
    max_sampler_steps: int
    """Fails at this many sampler steps or fewer."""
    trained_below: int
    """... for checkpoints of fewer training steps than this."""
    evidence: str
    """What was measured, for the warning."""
    remedy: str


KNOWN_FAILURES = (
    KnownFailure(
        prediction="eps",
        samplers=("ddim", "dpm++"),
        max_sampler_steps=100,
        trained_below=10_000,
        evidence="eps-prediction networks trained this briefly gave noise with ddim-50 and dpm++-5/25 "
        "on a toy cohort (median correlation with the true shapes 0.03-0.30; ddpm-1000: 0.71)",
        remedy="sample with --sampler ddpm --steps 1000, or train with diffusion.prediction=v",
    ),
)


def sampling_warnings(
    *,
    step: int,
    prediction: str,
    sampler: str,
    steps: int,
    eta: float,
    use_ema: bool,
    ema_decay: float,
    ema_warmup: bool,
) -> list[str]:
    """Plain one-line warnings (no "warning:" prefix) for sampling a checkpoint of ``step`` training steps
    trained for ``prediction``, with ``sampler`` at ``steps`` steps and noise ``eta``; EMA weights when
    ``use_ema``. Empty when nothing is known to go wrong."""
    out = []
    if use_ema:
        share = first_step_share(step, ema_decay, ema_warmup)
        if share >= EMA_SHARE_LIMIT:
            fine = steps_until_share(EMA_SHARE_LIMIT, ema_decay, ema_warmup)
            out.append(
                f"the EMA weights at step {step} still hold {share:.0%} of the first step's weights "
                f"(train.ema_decay {ema_decay:g}, {'with' if ema_warmup else 'no'} warm-up; below "
                f"{EMA_SHARE_LIMIT:.0%} from step {fine}): samples will look like noise; use --no-ema or "
                "train longer"
            )
    for f in KNOWN_FAILURES:
        deterministic = eta == 0
        if (
            prediction == f.prediction
            and sampler in f.samplers
            and deterministic
            and steps <= f.max_sampler_steps
            and step < f.trained_below
        ):
            out.append(
                f"{sampler} with {steps} steps is known to fail on a checkpoint trained {step} steps for "
                f"{prediction} prediction: {f.evidence}; {f.remedy}"
            )
    return out
