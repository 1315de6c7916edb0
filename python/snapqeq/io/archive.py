"""TorchScript archives with a JSON metadata file: the format of every snapqeq model file.

TorchScript (rather than ``torch.export``) is what libtorch in the LAMMPS plugin loads; its
upstream deprecation warnings are kept out of user logs.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from snapqeq import __version__


@dataclass
class LoadedArchive:
    """A validated snapqeq archive: the scripted module, its metadata and its path."""

    module: torch.jit.ScriptModule
    metadata: dict
    path: Path

    @property
    def elements(self) -> list[str]:
        return list(self.metadata["elements"])

METADATA_FILE = "snapqeq.json"
KINDS = {"snapqeq-model": "snapqeq energy model",
         "snapqeq-olcao-model": "snapqeq OLCAO coefficient model"}


@contextmanager
def quiet_torchscript():
    """Suppress TorchScript's deprecation warnings inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


def write_archive(module: torch.nn.Module, metadata_json: str, path: str | Path,
                  overwrite: bool = False) -> Path:
    """Script ``module`` and save it with the metadata; never replaces a file unasked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --force) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with quiet_torchscript():
        scripted = torch.jit.script(module.eval())
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: metadata_json})
    tmp.replace(path)
    return path


def read_archive(path: str | Path, format_name: str, format_version: int,
                 required: Sequence[str], what: str = "model"):
    """Load an archive and validate its metadata: (scripted module, metadata dict).

    Raises ValueError naming the file for a missing file, a non-TorchScript file, missing
    metadata or fields, another format, or another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    extra = {METADATA_FILE: ""}
    try:
        with quiet_torchscript():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript model file: {err}") from None
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path} has no {METADATA_FILE}; it was not written by snapqeq")
    try:
        meta = json.loads(extra[METADATA_FILE])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable {METADATA_FILE}: {err}") from None
    if meta.get("format") != format_name:
        found = KINDS.get(meta.get("format"), repr(meta.get("format")))
        raise ValueError(f"{path} is a {found} file, expected a "
                         f"{KINDS.get(format_name, format_name)} file")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{path}: {what} metadata lacks {missing}; re-export the {what}")
    if meta["format_version"] != format_version:
        raise ValueError(
            f"{path}: {what} format version {meta['format_version']}, this snapqeq reads "
            f"version {format_version}; re-export the {what} with snapqeq {__version__}")
    return module, meta


def archive_format(path: str | Path) -> str | None:
    """The ``format`` name in a model file's metadata without loading the networks (a
    TorchScript file is a zip archive); None for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            return json.loads(archive.read(names[0])).get("format") if names else None
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, AttributeError):
        return None
