"""What every command shares: how library messages are shown."""

from medddpm.cli import options, training


def test_library_messages_are_shown_as_plain_text(capsys):
    options.print_message("Read scans/[brain]/t1.nii.gz: [bold]as written[/bold]")
    options.print_message("warning: scan.nii.gz: spacing 0.5 x 0.5 x 5 mm")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "Read scans/[brain]/t1.nii.gz: [bold]as written[/bold]",  # not read as rich markup
        "warning: scan.nii.gz: spacing 0.5 x 0.5 x 5 mm",
    ]


def test_training_commands_resume_with_the_runs_saved_config_read_as_it_was_trained(tmp_path):
    """train and train-autoencoder share this: --resume without --config reads OUTPUT/config.yaml, whose
    missing fields take their LEGACY_VALUES (a run saved before EMA warm-up existed trained without it)."""
    import pytest
    import yaml

    from medddpm.config import build_config
    from medddpm.errors import InputError

    saved = build_config(overrides=["train.max_steps=7"]).to_dict()
    del saved["train"]["ema_warmup"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = training.training_config(tmp_path, None, None, True, [24], {"train.seed": 3})
    assert resumed.train.ema_warmup is False and resumed.train.max_steps == 7
    assert resumed.train.seed == 3 and list(resumed.data.image_size) == [24, 24, 24]
    fresh = training.training_config(tmp_path, None, ["train.max_steps=5"], False, None, {})
    assert fresh.train.ema_warmup is True and fresh.train.max_steps == 5
    with pytest.raises(InputError, match="one number or three"):
        training.training_config(tmp_path, None, None, False, [8, 8], {})
