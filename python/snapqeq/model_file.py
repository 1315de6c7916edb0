"""Reading a snapqeq model file: format name and version, required metadata, validation.

The writer is :mod:`snapqeq.export`; this module only reads (:func:`load_model`), so that
every layer that needs a trained model (site features, calculators, the CLI) can load one
without importing the exporter. It depends on nothing but :mod:`snapqeq.archive`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from snapqeq.archive import LoadedArchive, read_archive

__all__ = ["FORMAT", "FORMAT_VERSION", "REQUIRED", "LoadedModel", "is_training_checkpoint",
           "load_model"]

FORMAT = "snapqeq-model"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "elements", "descriptor", "hardness", "widths", "e0",
            "units", "has_short_range")


@dataclass
class LoadedModel(LoadedArchive):
    """A validated model file: the scripted module and its metadata."""

    @property
    def committee(self) -> int:
        """Number of committee members (1 for a single model)."""
        return int(self.metadata.get("committee") or 1)

    @property
    def olcao(self) -> dict | None:
        """Metadata of the OLCAO head (recipe, exponents, ...), None without one."""
        return self.metadata.get("olcao")


def is_training_checkpoint(path: str | Path) -> bool:
    """True for a ``torch.save`` file (a training checkpoint such as checkpoint_best.pt):
    a zip archive with pickled data but none of TorchScript's code and constants."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return (any(n.endswith("/data.pkl") for n in names)
            and not any(n.endswith("/constants.pkl") for n in names))


def load_model(path: str | Path) -> LoadedModel:
    """Load and validate a model file (format name, version, required fields).

    Raises ValueError with a clear message for anything else, e.g. a training checkpoint
    (which ``snapqeq export`` turns into a model file).
    """
    if is_training_checkpoint(path):
        raise ValueError(f"{path} is a training checkpoint, not a model file: run `snapqeq "
                         f"export TRAINING_DIR --out model.pt` on its training folder")
    module, meta = read_archive(path, FORMAT, FORMAT_VERSION, REQUIRED)
    if meta.get("olcao") and not hasattr(module, "potential_coefficients"):
        raise ValueError(f"{path}: metadata announces an OLCAO head the archive lacks")
    n = meta.get("committee") or 1
    if n > 1:
        if not hasattr(module, "member_chi") or len(meta.get("members") or []) != n:
            raise ValueError(f"{path}: metadata announces a committee of {n} models the "
                             "archive (or its 'members' list) lacks")
        if meta.get("olcao"):
            raise ValueError(f"{path}: a committee file with an OLCAO head is not supported")
    return LoadedModel(module, meta, Path(path))
