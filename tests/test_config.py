import re
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from medddpm.config import PRESET_DIR, Config, build_config, config_from_dict, default_yaml, parse_set
from medddpm.errors import InputError


def test_default_yaml_matches_code_defaults():
    text = (PRESET_DIR / "default.yaml").read_text()
    assert text == default_yaml(), "regenerate: python -m medddpm.config > medddpm/configs/default.yaml"
    assert config_from_dict(yaml.safe_load(text)) == Config()


def test_every_field_has_a_reason():
    for section in Config.model_fields:
        sub = type(getattr(Config(), section))
        for name, info in sub.model_fields.items():
            assert info.description, f"{section}.{name} has no docstring"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_presets_load(preset):
    assert isinstance(build_config(preset), Config)


def test_precedence(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-3\n  max_steps: 7\n  batch_size: 3\n")
    cfg = build_config(f, ["train.max_steps=9", "train.batch_size=5"], {"train.batch_size": 6})
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; converted by type
    assert cfg.train.max_steps == 9  # --set beats the file
    assert cfg.train.batch_size == 6  # a flag beats --set
    assert cfg.train.warmup_steps == Config().train.warmup_steps  # untouched default


def test_unknown_key_suggests_closest(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(InputError, match="unknown config key 'train.learning_rate'"):
        build_config(f)
    with pytest.raises(InputError, match="did you mean 'train.max_steps'"):
        build_config(None, ["train.max_step=3"])


def test_bad_values_name_the_key():
    with pytest.raises(InputError, match="train.precision"):
        build_config(None, ["train.precision=fp8"])
    with pytest.raises(InputError, match="norm_num_groups"):
        build_config(None, ["model.channels=[30, 64, 64]"])


def test_image_size_one_or_three_numbers():
    assert build_config(None, ["data.image_size=32"]).data.image_size == (32, 32, 32)
    assert build_config(None, ["data.image_size=[16, 24, 32]"]).data.image_size == (16, 24, 32)


def test_parse_set_nests_and_reads_yaml():
    assert parse_set(["a.b=1", "a.c=[1, 2]", "d.e=true"]) == {"a": {"b": 1, "c": [1, 2]}, "d": {"e": True}}
    with pytest.raises(InputError):
        parse_set(["novalue"])


def test_unknown_preset_lists_presets():
    with pytest.raises(InputError, match="tiny"):
        build_config("no-such-preset")


def _model(channels, attention, heads):
    return [
        f"model.channels={list(channels)}",
        f"model.attention_levels={[str(a).lower() for a in attention]}".replace("'", ""),
        f"model.num_head_channels={heads}",
        "model.norm_num_groups=8",
    ]


def test_num_head_channels_need_divide_only_levels_with_attention():
    """As MONAI's DiffusionModelUNet builds it: 24 channels at a level without attention need not
    split into heads of 16 (this config used to be refused)."""
    import torch

    from medddpm.models.unet import build_unet

    cfg = build_config(None, _model((16, 24, 32), (False, False, True), 16))
    model = build_unet(cfg.model)
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 8, 8, 8), timesteps=torch.tensor([3]))
    assert out.shape == (1, 1, 8, 8, 8)


@pytest.mark.parametrize(
    ("channels", "attention", "message"),
    [
        ((16, 24, 32), (False, True, True), "channel count 24 of level 1, which has attention"),
        # the middle block always has attention, at the last level's channels
        ((16, 32, 24), (False, True, False), "channel count 24 of level 2, which feeds the middle block"),
        ((16, 32, 24), (False, False, False), "channel count 24 of level 2, which feeds the middle block"),
    ],
)
def test_num_head_channels_refused_where_monai_refuses(channels, attention, message):
    from medddpm.config import ModelConfig
    from medddpm.models.unet import build_unet

    with pytest.raises(
        InputError, match=f"invalid value for 'model': num_head_channels=16 must divide {message}"
    ):
        build_config(None, _model(channels, attention, 16))
    unchecked = ModelConfig.model_construct(
        channels=channels, attention_levels=attention, num_head_channels=16, norm_num_groups=8
    )
    with pytest.raises(ValueError, match="divisible by num_head_channels"):
        build_unet(unchecked)  # MONAI refuses it too, only later and less clearly


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_builds_its_model_and_passes_a_dry_run(preset: str, tmp_path: Path, capsys):
    """Each preset's U-Net is built with real weights and denoises a small volume (shape kept, finite);
    ``train --dry-run`` on a real scan (nibabel's anatomical.nii) reports it usable and the model's
    own parameter count, and writes nothing."""
    import shutil

    import torch
    from nibabel.testing import data_path

    from medddpm.cli import main
    from medddpm.models.memory import unet_model_config
    from medddpm.models.spaces import model_channels
    from medddpm.models.unet import build_unet

    cfg = build_config(preset)
    torch.manual_seed(0)
    mc = unet_model_config(cfg)  # a latent preset's channels come from its autoencoder section
    model = build_unet(mc).eval()
    side = 2 ** len(cfg.model.channels)  # halved at each level but the last, and still even
    x = torch.randn(1, model_channels(mc), side, side, side)
    with torch.no_grad():
        y = model(x, torch.tensor([500]))
    assert y.shape == x.shape and torch.isfinite(y).all()

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(Path(data_path) / "anatomical.nii", scans)
    out = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e, LargestTensor() as largest:
        main(["train", str(scans), "--output", str(out), "--config", preset, "--dry-run"])
        raise SystemExit(0)
    err = " ".join(capsys.readouterr().err.split())
    assert not e.value.code, err
    parameters = sum(p.numel() for p in model.parameters())
    assert "1 NIfTI files" in err and "1 usable, 0 not" in err and "estimated peak" in err
    assert f"{parameters:,} parameters" in err
    assert ("estimated sampling peak" in err) == (cfg.model.space == "latent")
    assert not out.exists()
    # the estimate runs on meta tensors: nothing of the preset's size is allocated (the scan is 33x41x25)
    assert largest.nbytes < 2**20, f"the dry run allocated a tensor of {largest.nbytes:,} bytes"

    if cfg.model.space == "latent":  # the first stage of the same preset
        with pytest.raises(SystemExit) as e, LargestTensor() as largest:
            main(["train-autoencoder", str(scans), "--output", str(out), "--config", preset, "--dry-run"])
            raise SystemExit(0)
        err = " ".join(capsys.readouterr().err.split())
        assert not e.value.code and "estimated peak" in err and "PatchDiscriminator" in err, err
        assert not out.exists() and largest.nbytes < 2**20


class LargestTensor(TorchDispatchMode):
    """The size of the largest tensor with storage (not on the meta device) made while it is active."""

    nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.nbytes = max(self.nbytes, t.untyped_storage().nbytes())
        return out


GIB = 2**30
FITS = re.compile(r"one (\d+) GB GPU")


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_names_what_it_fits_and_its_estimate_fits_it(preset: str):
    """Each preset's header names the machine it is sized for (``# fits: one N GB GPU`` or ``a CPU``;
    default.yaml, the generated template, names none). For a GPU, every estimate of the preset at its
    own settings (training; for a latent preset also train-autoencoder and sampling), with 15 % headroom
    and 0.5 GiB of CUDA context, fits N GB. ``precision: auto`` is estimated as fp32, the larger."""
    from medddpm.config import preset_header
    from medddpm.models.memory import estimate_autoencoder_memory, estimate_memory, estimate_sampling_memory

    fits = preset_header(preset)["fits"]
    if preset == "default":
        assert fits == ""
        return
    if fits == "a CPU":
        return
    match = FITS.fullmatch(fits)
    assert match, f"{preset}.yaml: '# fits:' names '{fits}', not 'one N GB GPU' or 'a CPU'"
    cfg = build_config(preset)
    precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision
    totals = {"train": estimate_memory(cfg, precision).total_gib}
    if cfg.model.space == "latent":
        totals["train-autoencoder"] = estimate_autoencoder_memory(cfg, precision).total_gib
        totals["sample"] = estimate_sampling_memory(cfg, precision).total_gib
    limit = int(match.group(1)) * 1e9 / GIB
    for stage, total in totals.items():
        assert total * 1.15 + 0.5 < limit, f"{preset}: {stage} needs {total:.1f} GiB, beyond {fits}"


HEADER_FIGURES = {  # preset -> (figure in its header, how it is computed)
    "brain-mri-1mm": [
        (r"train-autoencoder ([\d.]+) GiB", "autoencoder"),
        (r"; train ([\d.]+) GiB", "train"),
        (r"sample ([\d.]+) GiB", "sample"),
    ],
    "ct-256": [
        (r"train-autoencoder ([\d.]+) GiB", "autoencoder"),
        (r"; train ([\d.]+) GiB", "train"),
        (r"sample ([\d.]+) GiB", "sample"),
    ],
    "ct-256-wavelet": [(r"\): ([\d.]+) GiB at batch 2", "train")],
    "brain-mri-64": [(r"([\d.]+) GiB in fp32", "train")],
    "ct-128": [(r"CUDA autocast rules\): ([\d.]+) GiB", "train")],
}


@pytest.mark.parametrize("preset", sorted(HEADER_FIGURES))
def test_the_estimates_in_a_preset_header_are_the_estimators(preset: str):
    """A preset's header states its estimates; they are what ``--dry-run`` computes today (to the
    0.1 GiB shown), so that a change to the preset or the estimator cannot leave the comment behind."""
    from medddpm.config import preset_header
    from medddpm.models.memory import estimate_autoencoder_memory, estimate_memory, estimate_sampling_memory

    cfg = build_config(preset)
    precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision
    estimates = {
        "train": lambda: estimate_memory(cfg, precision).total_gib,
        "autoencoder": lambda: estimate_autoencoder_memory(cfg, precision).total_gib,
        "sample": lambda: estimate_sampling_memory(cfg, precision).total_gib,
    }
    text = " ".join(preset_header(preset)["text"].split())
    for pattern, stage in HEADER_FIGURES[preset]:
        found = re.search(pattern, text)
        assert found, f"{preset}.yaml header: no '{pattern}'"
        assert float(found.group(1)) == pytest.approx(estimates[stage](), abs=0.051), (preset, stage)


def test_a_saved_config_without_a_later_field_means_its_legacy_value(tmp_path):
    """A config saved before train.ema_warmup existed was trained without warm-up: the checkpoint's
    meta.json and RUN_DIR/config.yaml (a --resume) read it as False, while a user's config file
    lacking it gets today's default."""
    from medddpm.config import LEGACY_VALUES, load_config, saved_config_from_dict

    old = Config().to_dict()
    del old["train"]["ema_warmup"]
    assert LEGACY_VALUES["train.ema_warmup"] is False and Config().train.ema_warmup is True
    assert saved_config_from_dict(old).train.ema_warmup is False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_config(path).train.ema_warmup is False
    assert build_config(path, saved=True).train.ema_warmup is False
    assert build_config(path, ["train.ema_warmup=true"], saved=True).train.ema_warmup is True
    assert build_config(path).train.ema_warmup is True
    # A saved config that has the field keeps it.
    assert saved_config_from_dict(Config().to_dict()).train.ema_warmup is True


def test_configs_written_before_slab_wise_decoding_still_load():
    """An autoencoder folder's config.yaml from the sliding-window days names autoencoder.overlap."""
    assert config_from_dict({"autoencoder": {"overlap": 0.5}}) == Config()
