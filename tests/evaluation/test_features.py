"""Feature networks: MedicalNet-format checkpoints, safe loading, seeded random networks, shapes."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medddpm.errors import InputError
from medddpm.evaluation.features import build_feature_extractor, build_resnet, medicalnet_normalize


def volumes(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """MONAI resnet10 in MedicalNet's configuration: random weights, non-trivial BatchNorm statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = build_resnet("resnet10")
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def medicalnet_file(reference, tmp_path_factory) -> pathlib.Path:
    """A checkpoint laid out as MedicalNet ships them: 'state_dict', 'module.' prefixes, a conv_seg head."""
    state = {f"module.{k}": v.clone() for k, v in reference.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(512, 32, 2, 2, 2)
    path = tmp_path_factory.mktemp("weights") / "resnet_10_23dataset.pth"
    torch.save({"state_dict": state, "epoch": 200}, path)
    return path


def test_medicalnet_checkpoint_gives_the_features_of_the_unprefixed_model(
    reference, medicalnet_file, tmp_path
):
    x = volumes(3, 16)
    fx = build_feature_extractor("resnet10", weights=medicalnet_file)
    with torch.inference_mode():
        expected = reference(medicalnet_normalize(x)).double().numpy()
    feats = fx.extract(x, batch_size=2)
    assert feats.dtype == np.float64 and feats.shape == (3, 512)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    assert fx.weights_sha256 is not None and len(fx.weights_sha256) == 64
    assert fx.label == f"MedicalNet resnet10 (sha256 {fx.weights_sha256[:12]}…)"

    plain = tmp_path / "resnet10.safetensors"  # the same weights, unprefixed, as safetensors
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, plain)
    np.testing.assert_allclose(
        build_feature_extractor("resnet10", weights=plain).extract(x, batch_size=2), feats, rtol=1e-6
    )


def test_checkpoint_with_a_missing_key_is_an_input_error(reference, tmp_path):
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if k != "layer4.0.conv2.weight"}
    path = tmp_path / "incomplete.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(InputError, match="layer4.0.conv2.weight") as info:
        build_feature_extractor("resnet10", weights=path)
    assert str(path) in str(info.value) and "missing" in str(info.value)
    assert "\n" not in str(info.value)


def test_checkpoint_of_another_depth_is_an_input_error(tmp_path):
    path = tmp_path / "resnet10.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(64, 1, 3, 3, 3)}}, path)
    with pytest.raises(InputError, match=r"wrong shape: conv1\.weight \(64, 1, 3, 3, 3\)"):
        build_feature_extractor("resnet10", weights=path)


class _TouchMarker:
    """Unpickling this creates a file: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    # the payload is live: unrestricted unpickling would run it
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_TouchMarker(live)))
    assert live.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    payload = {"state_dict": _TouchMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InputError, match="refused") as info:
        build_feature_extractor("resnet10", weights=path)
    assert not marker.exists()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, content",
    [("notes.pth", b"plain text, not a checkpoint"), ("empty.pt", b""), ("bad.safetensors", b"nope")],
)
def test_unreadable_weights_are_one_line_input_errors(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        build_feature_extractor("resnet10", weights=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="not found"):
        build_feature_extractor("resnet10", weights=tmp_path / "absent.pth")


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_feature_extractor("resnet10", seed=0), build_feature_extractor("resnet10", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = build_feature_extractor("resnet10", seed=1)
    sa, sb, sc = (fx.model.state_dict() for fx in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert a.label == "random-init resnet10 (seed 0): comparable only with itself"
    assert a.weights_sha256 is None and a.feature_dim == 512


@pytest.mark.parametrize("side", [16, 32])
def test_resnet10_features_have_512_dims(side):
    fx = build_feature_extractor("resnet10", seed=0)
    feats = fx.extract(volumes(2, side, seed=side), batch_size=2)
    assert feats.shape == (2, 512) and feats.dtype == np.float64 and np.isfinite(feats).all()


def test_normalisation_makes_features_independent_of_intensity_scale():
    fx = build_feature_extractor("resnet10", seed=0)
    x = volumes(2, 16)
    x[:, :, :4] = 0  # some background
    np.testing.assert_allclose(fx.extract(x * 1000.0), fx.extract(x), rtol=1e-4, atol=1e-5)
    z = medicalnet_normalize(x)
    for v, zv in zip(x, z, strict=True):  # MONAI's normalisation, volume by volume
        torch.testing.assert_close(zv, (v - v.mean()) / v.std())
    assert abs(z[1].mean().item()) < 1e-5 and z[1].std().item() == pytest.approx(1.0, abs=1e-5)
    flat = medicalnet_normalize(torch.full((1, 1, 4, 4, 4), 3.0))
    assert torch.equal(flat, torch.zeros_like(flat))


def test_features_move_smoothly_when_an_exact_zero_background_turns_faintly_nonzero():
    """A faint floor (0.001) where a scan's background was exactly 0 barely moves its features: a far
    smaller step than light noise inside the head, so synthetic scans are not told apart by that."""
    fx = build_feature_extractor("resnet10", seed=0)
    x = volumes(2, 16).clamp(0, 1)
    x[:, :, :, :5] = 0  # background, exactly 0 as a real scan's after percentile scaling
    floor = torch.where(x == 0, torch.full_like(x, 1e-3), x)
    noisy = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    step_floor = np.linalg.norm(fx.extract(floor) - fx.extract(x), axis=1)
    step_noise = np.linalg.norm(fx.extract(noisy) - fx.extract(x), axis=1)
    assert (step_floor < 0.1 * step_noise).all()


def test_unknown_network_is_an_input_error():
    with pytest.raises(InputError, match="resnet10, resnet18, resnet34, resnet50"):
        build_feature_extractor("resnet11")


@pytest.mark.parametrize(
    ("name", "dim", "downsample_convs"),
    [("resnet18", 512, False), ("resnet34", 512, False), ("resnet50", 2048, True)],
)
def test_deeper_resnets_give_features_in_medicalnets_layout(name: str, dim: int, downsample_convs: bool):
    """resnet18/34 (basic blocks, 512 channels out, MedicalNet's parameter-free shortcut A) and resnet50
    (bottlenecks, 4 x 512 out, 1x1x1 convolution shortcuts B) extract finite features that tell two
    volumes apart; the shortcut type decides which MedicalNet checkpoint keys the network has."""
    fx = build_feature_extractor(name, seed=0)
    feats = fx.extract(volumes(2, 16, seed=1), batch_size=2)
    assert fx.feature_dim == dim and feats.shape == (2, dim)
    assert np.isfinite(feats).all() and not np.allclose(feats[0], feats[1])
    keys = fx.model.state_dict().keys()
    assert ("layer2.0.downsample.0.weight" in keys) == downsample_convs


def test_channels_last_on_cpu_gives_the_features_of_the_plain_layout():
    extractor = build_feature_extractor("resnet10", seed=3)
    assert extractor.memory_format == torch.channels_last_3d
    volumes = torch.randn(3, 1, 24, 20, 28, generator=torch.Generator().manual_seed(0))
    plain = build_resnet("resnet10").eval()
    plain.load_state_dict(extractor.model.state_dict())
    with torch.inference_mode():
        expected = plain(medicalnet_normalize(volumes)).double().numpy()
    np.testing.assert_allclose(extractor.extract(volumes, batch_size=2), expected, rtol=1e-4, atol=1e-5)
