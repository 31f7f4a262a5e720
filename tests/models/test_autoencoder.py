import torch

from medddpm.config import AutoencoderConfig
from medddpm.models.autoencoder import build_autoencoder, decode_tiled, downsampling, encode, encode_tiled

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


def test_decode_tiled_equals_whole_volume_decoding_when_one_window_covers_it():
    """Both fit: a window as large as the latent (or larger: it is cut to the latent) is one pass."""
    ae = tiny_autoencoder()
    z = torch.randn(1, TINY.latent_channels, 4, 5, 6)
    with torch.no_grad():
        whole = ae.decode(z)
    tiled = decode_tiled(ae, z, (8, 8, 8), overlap=0.5)
    assert tiled.shape == whole.shape == (1, 1, 16, 20, 24)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-4)
    x = torch.randn(1, 1, 16, 20, 24)
    torch.testing.assert_close(encode_tiled(ae, x, (32, 32, 32)), encode(ae, x), rtol=0, atol=1e-4)


def test_decode_tiled_over_many_windows_equals_whole_decoding_for_a_local_decoder():
    """Tiles, overlap and gaussian blending put every voxel back in place: with a decoder whose output
    voxels depend on one latent voxel only, 27+ overlapping tiles give the whole-volume result."""
    torch.manual_seed(0)
    local = torch.nn.ConvTranspose3d(4, 1, kernel_size=4, stride=4)
    z = torch.randn(1, 4, 9, 10, 11)
    with torch.no_grad():
        whole = local(z)
    tiled = decode_tiled(local, z, (4, 4, 4), overlap=0.5)
    assert tiled.shape == whole.shape == (1, 1, 36, 40, 44)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
