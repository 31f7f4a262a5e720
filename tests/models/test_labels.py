"""Label-map channels: one-hot or index bits plus "present", pooled to the network's resolution."""

from __future__ import annotations

import numpy as np
import torch

from medddpm.config import ModelConfig
from medddpm.models.conditioning import label_channel_count, label_channels
from medddpm.models.unet import build_unet


def test_one_hot_and_present_match_numpy():
    values = (0, 2, 7)
    rng = np.random.default_rng(0)
    maps = rng.choice(values, size=(2, 1, 4, 4, 4))
    out = label_channels(torch.from_numpy(maps).float(), torch.tensor([True, False]), values, (4, 4, 4))
    assert out.shape == (2, label_channel_count(3), 4, 4, 4) == (2, 4, 4, 4, 4)
    for k, v in enumerate(values):
        np.testing.assert_array_equal(out[0, k].numpy(), (maps[0, 0] == v).astype(np.float32))
    assert (out[0, -1] == 1).all() and (out[1] == 0).all()  # present; a dropped row is all zero


def test_more_than_eight_values_are_index_bits():
    values = tuple(range(0, 30, 3))  # 10 values: 4 bit planes
    maps = torch.tensor(values, dtype=torch.float32).view(1, 1, 10, 1, 1).expand(1, 1, 10, 2, 2)
    out = label_channels(maps, None, values, (10, 2, 2))
    assert out.shape[1] == label_channel_count(10) == 5
    for i in range(10):
        bits = [(i >> b) & 1 for b in range(4)]
        assert out[0, :4, i, 0, 0].tolist() == bits


def test_pooled_to_half_size_is_the_mean_of_each_2x2x2_block():
    values = (0, 1)
    maps = torch.from_numpy(np.random.default_rng(1).integers(0, 2, size=(1, 1, 8, 8, 8))).float()
    out = label_channels(maps, None, values, (4, 4, 4))
    blocks = maps[0, 0].numpy().reshape(4, 2, 4, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out[0, 1].numpy(), blocks, atol=1e-6)


def test_network_takes_the_mask_in_pixel_and_wavelet_space():
    for space, size in (("pixel", 16), ("wavelet", 8)):
        cfg = ModelConfig(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1,
                          norm_num_groups=8, num_head_channels=8, space=space)  # fmt: skip
        net = build_unet(cfg, label_values=(0, 1, 4)).eval()
        torch.manual_seed(0)
        for p in net.parameters():  # MONAI zero-initialises the output layer
            if not p.any():
                p.data.normal_(0, 0.1)
        x = torch.randn(2, net.out_channels, size, size, size)
        t = torch.tensor([10, 500])
        masks = torch.zeros(2, 1, 16, 16, 16)
        masks[:, :, 4:12, 4:12, 4:12] = 4
        with torch.no_grad():
            with_mask = net(x, t, labels=masks, labels_known=torch.tensor([True, True]))
            without = net(x, t)
            dropped = net(x, t, labels=masks, labels_known=torch.tensor([False, False]))
        assert with_mask.shape == x.shape
        assert not torch.allclose(with_mask, without)  # the mask reaches the output
        torch.testing.assert_close(dropped, without)  # a dropped mask is the unconditional model
