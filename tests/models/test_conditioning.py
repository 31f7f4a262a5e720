"""The conditional U-Net: condition embeddings added to the time embedding, unknown embeddings."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet

from medddpm.config import build_config
from medddpm.models.conditioning import ConditionalUNet
from medddpm.models.unet import build_unet

SIZES = [2, 0]  # a categorical variable with two categories, a continuous one


def _model(sizes=SIZES):
    torch.manual_seed(0)
    return build_unet(build_config("tiny").model, condition_sizes=sizes).eval()


def test_unconditional_model_is_monai_unet_and_conditional_adds_only_condition_keys():
    plain = build_unet(build_config("tiny").model)
    assert type(plain) is DiffusionModelUNet
    cond = _model()
    assert isinstance(cond, ConditionalUNet)
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(cond.state_dict())
    assert extra and all(k.startswith("condition_embed.") for k in extra)
    # The plain part is MONAI's forward: with the condition embedding's contribution removed, equal.
    cond.load_state_dict(plain.state_dict(), strict=False)
    x, t = torch.randn(2, 1, 16, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        cond.condition_embed.forward = lambda values, known, batch: torch.zeros(batch, 32)
        torch.testing.assert_close(cond(x, t), plain.eval()(x, t), rtol=0, atol=0)


def test_conditions_change_the_output_and_missing_means_unknown():
    model = _model()
    with torch.no_grad():  # MONAI zero-initialises the output and residual convolutions: perturb all
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t = torch.randn(2, 1, 16, 16, 16), torch.tensor([100, 100])
    values = torch.tensor([[0.0, 0.5], [1.0, 0.5]])
    known = torch.ones(2, 2, dtype=torch.bool)
    with torch.no_grad():
        a = model(x, t, cond_values=values, cond_known=known)
        b = model(x, t, cond_values=torch.tensor([[1.0, 0.5], [0.0, 0.5]]), cond_known=known)
        c = model(x, t, cond_values=torch.tensor([[0.0, -2.0], [1.0, -2.0]]), cond_known=known)
        none = model(x, t)
        unknown = model(x, t, cond_values=values * 7, cond_known=torch.zeros(2, 2, dtype=torch.bool))
    assert (a - b).abs().max() > 1e-4  # the category matters
    assert (a - c).abs().max() > 1e-4  # the number matters
    torch.testing.assert_close(none, unknown, rtol=0, atol=0)  # unknown ignores the values
    assert (none - a).abs().max() > 1e-4


def test_each_variable_has_its_own_unknown_embedding():
    model = _model()
    emb = model.condition_embed
    values = torch.tensor([[1.0, 0.3]])
    only_first = emb(values, torch.tensor([[True, False]]), 1)
    both = emb(values, torch.tensor([[True, True]]), 1)
    none = emb(None, None, 1)
    first_known = emb.embeds[0](torch.tensor([1]))
    first_unknown = emb.embeds[0](torch.tensor([2]))  # the row after the categories
    torch.testing.assert_close(only_first - none, first_known - first_unknown)
    assert (both - only_first).abs().max() > 0
    # One learnable "unknown" vector for the continuous variable, gradients reach it.
    emb(values, torch.tensor([[True, False]]), 1).sum().backward()
    assert emb.unknown["1"].grad is not None and emb.unknown["1"].grad.abs().sum() > 0
