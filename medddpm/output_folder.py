"""The output-folder policy of every command that writes a folder: train, sample, evaluate, audit, demo,
study.

1. Check, before any work and writing nothing (``check_output``): the path is a folder or does not
   exist yet, does not lie inside a file, can be written (``os.access`` on the nearest folder that
   exists) and does not overlap an input folder. A folder that is not empty is refused with one
   line naming it and what to pass: ``--resume`` where the command can continue, ``--overwrite``,
   or another ``--output``.
2. Prepare (``prepare_output``): create the folder (an OSError of mkdir, a read-only file system
   say, is an InputError too), remove the temporaries an interrupted earlier write left, and with
   ``--overwrite`` delete what the command itself writes there: never anything else.
3. Publish atomically: a file through ``atomic_path`` (written beside its final name, fsynced,
   renamed into place), a whole folder through ``atomic_folder`` (``temporary_folder``, then
   ``publish_folder``). A crash leaves an earlier file or folder intact and at worst a temporary,
   which the next run removes.

What each command writes is one ``Outputs`` entry in the table at the end (RUN_FOLDER, ...), so
what ``--overwrite`` may delete can be read, and tested, in one place.

May import: ``errors``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medddpm.errors import InputError


@dataclass(frozen=True)
class Outputs:
    """What one command writes directly inside its output folder."""

    noun: str
    """The folder in messages: "run folder", "report folder", ..."""
    remedy: str
    """What to pass when the folder is not empty (--resume, --overwrite, another --output)."""
    files: tuple[str, ...] = ()
    """Regular expressions matching the whole name of each file the command writes."""
    folders: tuple[str, ...] = ()
    """Regular expressions matching the whole name of each folder the command writes; such a
    folder is the command's as a whole (checkpoints/, previews/, ...)."""
    temporaries: tuple[str, ...] = ()
    """Names of the temporaries an interrupted write leaves (never renamed into place, so never
    complete): removed whenever the folder is prepared."""
    whole: bool = False
    """The folder is published as a whole (``publish_folder``), replacing an earlier one: then
    ``--overwrite`` also needs a folder that holds nothing but what the command writes."""

    def owns(self, entry: Path) -> bool:
        """Whether ``entry`` (a path inside the folder) is one the command writes."""
        patterns = self.folders if entry.is_dir() else self.files
        return any(re.fullmatch(p, entry.name) for p in patterns)

    def is_temporary(self, entry: Path) -> bool:
        """Whether ``entry`` is a temporary file of an interrupted write (a folder never is)."""
        return not entry.is_dir() and any(re.fullmatch(p, entry.name) for p in self.temporaries)


# ---------------------------------------------------------------------------------------------
# 1. Checks (write nothing)


def is_empty(folder: Path) -> bool:
    """True for a folder with no entries, and for a path that does not exist yet."""
    return not folder.is_dir() or not any(folder.iterdir())


def check_writable(folder: Path) -> None:
    """The path is a folder or can become one, and this process may write there.

    Raises InputError naming the path that is in the way: the folder itself when it is a file, the
    file it would lie inside, or the nearest existing folder when that is not writable.
    """
    try:
        if folder.exists() and not folder.is_dir():
            raise InputError("exists and is not a folder (it is a file); choose another --output", folder)
        existing = folder
        while not existing.exists():
            existing = existing.parent
    except OSError as e:  # a parent without search permission, say
        reason = e.strerror or e
        raise InputError(f"cannot reach the output folder ({reason})", e.filename or folder) from None
    if not existing.is_dir():
        raise InputError("is a file, so the output folder cannot be created inside it", existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError("no permission to write here", existing)


def check_separate(folder: Path, outputs: Outputs, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is, holds or lies inside one of the ``inputs`` folders."""
    target = folder.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise InputError(
                f"the {outputs.noun} overlaps the input folder {given}; choose a separate --output", folder
            )


def not_empty(folder: Path, outputs: Outputs, detail: str = "") -> InputError:
    """The one-line refusal of a folder that is not empty: what to pass instead."""
    return InputError(f"output folder is not empty{detail}; {outputs.remedy}", folder)


def foreign_entries(folder: Path, outputs: Outputs) -> list[str]:
    """Names in ``folder`` that the command does not write (nor leave as temporaries), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not (outputs.owns(p) or outputs.is_temporary(p)))


def check_output(
    folder: Path,
    outputs: Outputs,
    *,
    overwrite: bool,
    resume: bool = False,
    inputs: Sequence[Path] = (),
) -> None:
    """Everything about ``folder`` checked before a command does any work; writes nothing.

    ``resume``: the command continues in a folder that is not empty (train --resume). ``inputs``:
    folders the command reads, which the output must not overlap.
    """
    check_writable(folder)
    check_separate(folder, outputs, inputs)
    if resume or is_empty(folder):
        return
    if not overwrite:
        raise not_empty(folder, outputs)
    foreign = foreign_entries(folder, outputs) if outputs.whole else []
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(
            f"--overwrite replaces the whole {outputs.noun}, and this folder also holds "
            f"{foreign[0]!r}{more}, which medddpm did not write; choose another --output",
            folder,
        )


# ---------------------------------------------------------------------------------------------
# 2. Preparing the folder


def _remove(entry: Path) -> None:
    """Delete a file, or a folder with its contents; a symbolic link is removed, never followed."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def prepare_output(folder: Path, outputs: Outputs, *, clear: bool) -> None:
    """Create ``folder``, remove leftover temporaries and, with ``clear`` (--overwrite), every entry
    the command writes; other files stay as they are. An OSError is an InputError naming the path."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for entry in folder.iterdir():
            if outputs.is_temporary(entry) or (clear and outputs.owns(entry)):
                _remove(entry)
    except OSError as e:  # a read-only file system, say, which os.access does not always tell
        raise InputError(
            f"cannot write the {outputs.noun} ({e.strerror or e})", e.filename or folder
        ) from None


# ---------------------------------------------------------------------------------------------
# 3. Publishing atomically


def fsync(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries, i.e. renames) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME-XXXXXXXX.SUFFIXES``); once the block has
    written it, fsync it and rename it into place. If the block fails, the temporary is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync(tmp_path)
        os.replace(tmp_path, path)
        fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks: how manifests and reports name weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sibling_temporaries(final: Path) -> list[Path]:
    """Folders ``temporary_folder`` and ``publish_folder`` make beside ``final``."""
    pattern = re.compile(rf"\.{re.escape(final.name)}-(tmp|old)-[a-z0-9_]+")
    if not final.parent.is_dir():
        return []
    return [p for p in final.parent.iterdir() if pattern.fullmatch(p.name)]


def temporary_folder(final: Path) -> Path:
    """A new empty folder beside ``final`` (``.NAME-tmp-XXXXXXXX``) to build it in, with the
    permissions an ordinary new folder gets (mkdtemp's are private)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an earlier ``final`` as a whole.

    Every file is fsynced first, so ``final`` never names a folder with half-written files. Then
    the temporaries of earlier, interrupted publications beside ``final`` are removed.
    """
    for path in sorted(tmp.rglob("*"), reverse=True):  # files first, then the folders holding them
        if not path.is_symlink():
            fsync(path)
    fsync(tmp)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync(final.parent)
    for leftover in _sibling_temporaries(final):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``final`` to build it in; publish it as ``final`` once the
    block succeeds (``publish_folder``). If the block fails, the temporary folder is removed and
    ``final`` is untouched. The folder counterpart of ``atomic_path``."""
    tmp = temporary_folder(final)
    try:
        yield tmp
        publish_folder(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# What each command writes


def _atomic_temporary(stem: str, suffix: str) -> str:
    """The names ``atomic_path`` gives the temporaries of files named STEM + SUFFIX (regular
    expressions): ``.STEM-`` + tempfile's random letters + SUFFIX."""
    return rf"\.{stem}-[a-z0-9_]+{suffix}"


_SAMPLE_SUFFIX = r"\.(nii\.gz|nii|nrrd|mha)"  # medddpm.data.nifti.OUTPUT_FORMATS

RUN_FOLDER = Outputs(
    noun="run folder",
    remedy="pass --resume to continue this run, --overwrite to start again (deleting only the run's "
    "own files), or choose another --output",
    files=(r"config\.yaml", r"dataset\.json", r"metrics\.csv", r"autoencoder\.safetensors"),
    folders=("checkpoints", "previews", "cache", "tensorboard"),
    temporaries=(
        _atomic_temporary("config", r"\.yaml"),
        _atomic_temporary("dataset", r"\.json"),
        _atomic_temporary("autoencoder", r"\.safetensors"),
    ),
)
"""``medddpm train``: RUN_DIR (checkpoints/ removes its own temporaries as it writes). A latent run
also holds the autoencoder's weights (autoencoder.safetensors) and its latent cache (cache/)."""

AUTOENCODER_FOLDER = Outputs(
    noun="autoencoder folder",
    remedy="pass --resume to continue this run, --overwrite to start again (deleting only the run's "
    "own files), or choose another --output",
    files=(r"config\.yaml", r"dataset\.json", r"metrics\.csv", r"reconstruction\.json"),
    folders=("checkpoints", "previews", "cache", "tensorboard"),
    temporaries=(
        _atomic_temporary("config", r"\.yaml"),
        _atomic_temporary("dataset", r"\.json"),
        _atomic_temporary("reconstruction", r"\.json"),
    ),
)
"""``medddpm train-autoencoder``: AE_DIR, a run folder plus its reconstruction metrics."""

RUN_FOLDERS = {"diffusion": RUN_FOLDER, "autoencoder": AUTOENCODER_FOLDER}
"""The run folder of each kind of run (the "kind" in its checkpoints' meta.json)."""

SAMPLE_FOLDER = Outputs(
    noun="output folder",
    remedy="pass --overwrite to replace its samples (nothing else is deleted), or choose another --output",
    files=(
        rf"sample_\d+{_SAMPLE_SUFFIX}",
        r"sample_\d+\.json",
        r"manifest\.json",
        r"preview\.png",
        rf".+_(img|seg){_SAMPLE_SUFFIX}",
        r".+_img\.json",  # sample --masks: NAME_img / NAME_seg pairs
    ),  # fmt: skip
    temporaries=(
        _atomic_temporary(r"sample_\d+", _SAMPLE_SUFFIX),
        _atomic_temporary(r"sample_\d+", r"\.json"),
        _atomic_temporary(r".+_(img|seg)", _SAMPLE_SUFFIX),
        _atomic_temporary(r".+_img", r"\.json"),
        _atomic_temporary("manifest", r"\.json"),
        _atomic_temporary("preview", r"\.png"),
    ),
)
"""``medddpm sample``: OUT_DIR. A folder holding the manifest of the same recipe is resumed."""

NNUNET_FOLDER = Outputs(
    noun="dataset folder",
    remedy="pass --overwrite to replace the earlier export, or choose another --output",
    files=(r"dataset\.json",),
    folders=("imagesTr", "labelsTr"),
    whole=True,  # built in temporary_folder, then publish_folder
)
"""``medddpm export-nnunet``: an nnU-Net v2 raw dataset folder."""

REPORT_FOLDER = Outputs(
    noun="report folder",
    remedy="pass --overwrite to replace the earlier report, or choose another --output",
    files=(r"metrics\.json", r"report\.html", r"report\.md", r"features\.npz", r".+\.png"),
    whole=True,  # built in temporary_folder, then publish_folder: its temporaries lie beside it
)
"""``medddpm evaluate``: REPORT_DIR."""

AUDIT_FOLDER = Outputs(
    noun="audit folder",
    remedy="pass --overwrite to replace the earlier audit, or choose another --output",
    files=(r"audit\.json", r"report\.html", r".+\.png"),
    whole=True,  # built in temporary_folder, then publish_folder: its temporaries lie beside it
)
"""``medddpm audit``: AUDIT_DIR."""

DEMO_FOLDER = Outputs(
    noun="demo folder",
    remedy="pass --overwrite to run the demo again here (it replaces cohort/, run/, samples/ and "
    "report/), or choose another --output",
    folders=("cohort", "run", "samples", "report"),
)
"""``medddpm demo``: its four parts, each written by the command that makes it."""

STUDY_FOLDER = Outputs(
    noun="study folder",
    remedy="pass --overwrite to build the study again (only while no reader has answered), or choose "
    "another --output",
    files=(r"key\.json", r"study\.json"),
    folders=("readers",),
    whole=True,  # built in temporary_folder, then publish_folder; responses/ (the server's) is not its
    # own, so a study that holds answers is never replaced
)
"""``medddpm study build``: STUDY_DIR. ``study serve`` appends to STUDY_DIR/responses/."""

STUDY_REPORT_FOLDER = Outputs(
    noun="report folder",
    remedy="pass --overwrite to replace the earlier analysis, or choose another --output",
    files=(r"analysis\.json", r"answers\.csv", r"report\.html", r"report\.md", r".+\.png"),
    whole=True,
)
"""``medddpm study analyze``: REPORT_DIR."""
