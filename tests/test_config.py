from pathlib import Path

import pytest
import yaml

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
    from medddpm.models.unet import build_unet

    cfg = build_config(preset)
    torch.manual_seed(0)
    model = build_unet(cfg.model).eval()
    side = 2 ** len(cfg.model.channels)  # halved at each level but the last, and still even
    x = torch.randn(1, 1, side, side, side)
    with torch.no_grad():
        y = model(x, torch.tensor([500]))
    assert y.shape == x.shape and torch.isfinite(y).all()

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(Path(data_path) / "anatomical.nii", scans)
    out = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", str(scans), "--output", str(out), "--config", preset, "--dry-run"])
        raise SystemExit(0)
    err = " ".join(capsys.readouterr().err.split())
    assert not e.value.code, err
    parameters = sum(p.numel() for p in model.parameters())
    assert "1 NIfTI files" in err and "1 usable, 0 not" in err and "estimated peak" in err
    assert f"{parameters:,} parameters" in err
    assert not out.exists()


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
