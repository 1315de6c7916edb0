"""Reading a snapqeq model file: format name and version, required metadata, validation.

The writer is :mod:`snapqeq.training.export`; this module only reads (:func:`load_model`), so that
every layer that needs a trained model (site features, calculators, the CLI) can load one
without importing the exporter. It depends on nothing but :mod:`snapqeq.io.archive`.

The metadata record is defined once, by the JSON Schema ``model_file.schema.json`` shipped
beside this module (:data:`SCHEMA`): every key is required (null is a value, never an
omission), the writer validates what it writes and :func:`load_model` what it reads
(:func:`validate_metadata`), and ``pair_style snapqeq`` requires the same keys.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from snapqeq.io.archive import LoadedArchive, read_archive

__all__ = ["FORMAT", "FORMAT_VERSION", "REQUIRED", "SCHEMA", "LoadedModel",
           "is_training_checkpoint", "load_model", "validate_metadata"]

#: the JSON Schema of the metadata record (python/snapqeq/io/model_file.schema.json)
SCHEMA: dict = json.loads(
    resources.files("snapqeq.io").joinpath("model_file.schema.json").read_text())
FORMAT: str = SCHEMA["properties"]["format"]["const"]
FORMAT_VERSION: int = SCHEMA["properties"]["format_version"]["const"]
#: every key of the record (all are required)
REQUIRED: tuple[str, ...] = tuple(SCHEMA["required"])


@cache
def _validator():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


def validate_metadata(meta: dict, where: str = "model") -> None:
    """Raise ValueError unless ``meta`` is a valid metadata record (:data:`SCHEMA`); the
    message names ``where`` (a file), the offending key and what was wrong with it."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{where}: model metadata lacks {missing}; re-export the model")
    errors = sorted(_validator().iter_errors(meta), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        at = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"{where}: invalid model metadata at {at}: {err.message}")


@dataclass
class LoadedModel(LoadedArchive):
    """A validated model file: the scripted module and its metadata."""

    @property
    def committee(self) -> int:
        """Number of committee members (1 for a single model)."""
        return int(self.metadata["committee"])

    @property
    def olcao(self) -> dict | None:
        """Metadata of the OLCAO head (recipe, exponents, ...), None without one."""
        return self.metadata["olcao"]


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
    validate_metadata(meta, str(path))
    if meta.get("olcao") and not hasattr(module, "potential_coefficients"):
        raise ValueError(f"{path}: metadata announces an OLCAO head the archive lacks")
    n = meta["committee"]
    if n > 1:
        if not hasattr(module, "member_chi") or len(meta["members"] or []) != n:
            raise ValueError(f"{path}: metadata announces a committee of {n} models the "
                             "archive (or its 'members' list) lacks")
        if meta.get("olcao"):
            raise ValueError(f"{path}: a committee file with an OLCAO head is not supported")
    return LoadedModel(module, meta, Path(path))
