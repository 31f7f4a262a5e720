"""When sampling is known not to work: the EMA's share of the first weights, and the known failures."""

from __future__ import annotations

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from medddpm.diffusion.advice import EMA_SHARE_LIMIT, first_step_share, sampling_warnings, steps_until_share
from medddpm.training.learner import ema_multi_avg_fn


def simulated_share(updates: int, decay: float, warmup: bool) -> float:
    """The learner's own EMA (torch AveragedModel + ema_multi_avg_fn) fed weights 1 at the first update
    and 0 after it: what is left of the 1 is the first step's share."""
    model = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay, warmup))
    for k in range(updates):
        with torch.no_grad():
            model.weight.fill_(1.0 if k == 0 else 0.0)
        ema.update_parameters(model)
    return float(ema.module.weight.detach())


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("updates", [1, 2, 5, 40, 300])
def test_first_step_share_is_what_the_ema_holds(updates: int, warmup: bool):
    assert first_step_share(updates, 0.99, warmup) == pytest.approx(simulated_share(updates, 0.99, warmup))


def test_share_of_the_old_default_at_step_2000():
    """0.999^1999 = 13.5%: the 'about 13%' of a 2000-step run without warm-up; with it, nothing left."""
    assert first_step_share(2000, 0.999, False) == pytest.approx(0.999**1999)
    assert 0.13 < first_step_share(2000, 0.999, False) < 0.14
    assert first_step_share(2000, 0.999, True) < 1e-9
    n = steps_until_share(EMA_SHARE_LIMIT, 0.999, False)
    assert first_step_share(n, 0.999, False) < EMA_SHARE_LIMIT <= first_step_share(n - 1, 0.999, False)


def warnings_for(**changes) -> list[str]:
    settings = dict(
        step=20_000, prediction="v", sampler="dpm++", steps=25, eta=0.0, use_ema=True, ema_decay=0.999,
        ema_warmup=True,
    )  # fmt: skip
    return sampling_warnings(**{**settings, **changes})


def test_warnings():
    assert warnings_for() == []
    young = warnings_for(step=2000, ema_warmup=False)
    assert len(young) == 1 and "14%" in young[0] and "--no-ema" in young[0] and "step 2996" in young[0]
    assert warnings_for(step=2000, ema_warmup=False, use_ema=False) == []
    assert warnings_for(step=2000) == []  # warm-up: the EMA has forgotten the initial weights
    failing = warnings_for(step=6000, prediction="eps")
    assert len(failing) == 1 and "dpm++ with 25 steps" in failing[0] and "known to fail" in failing[0]
    assert len(warnings_for(step=6000, prediction="eps", sampler="ddim", steps=50)) == 1
    assert warnings_for(step=6000, prediction="eps", sampler="ddpm", steps=1000, eta=1.0) == []
    assert warnings_for(step=6000, prediction="eps", eta=1.0) == []  # the stochastic solver
    assert warnings_for(step=20_000, prediction="eps") == []
    both = warnings_for(step=10, prediction="eps", ema_warmup=False)
    assert len(both) == 2 and all("\n" not in w for w in both)
