"""What every command shares: how library messages are shown."""

from medddpm.cli import options


def test_library_messages_are_shown_as_plain_text(capsys):
    options.print_message("Read scans/[brain]/t1.nii.gz: [bold]as written[/bold]")
    options.print_message("warning: scan.nii.gz: spacing 0.5 x 0.5 x 5 mm")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "Read scans/[brain]/t1.nii.gz: [bold]as written[/bold]",  # not read as rich markup
        "warning: scan.nii.gz: spacing 0.5 x 0.5 x 5 mm",
    ]
