import torch

from medddpm.config import AutoencoderConfig
from medddpm.models.autoencoder import build_autoencoder, downsampling, encode

TINY = AutoencoderConfig(channels=(8, 16, 16), norm_num_groups=4, patch_size=16)


def tiny_autoencoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_autoencoder(TINY).eval()


def test_latent_shape_and_encode_is_the_posterior_mean():
    ae = tiny_autoencoder()
    x = torch.randn(2, 1, 16, 16, 24)
    z = encode(ae, x)
    f = downsampling(TINY)
    assert f == 4 and z.shape == (2, TINY.latent_channels, 4, 4, 6)
    z_mu, z_sigma = ae.encode(x)
    torch.testing.assert_close(z, z_mu, rtol=0, atol=0)
    assert not torch.allclose(z, ae.sampling(z_mu, z_sigma))
