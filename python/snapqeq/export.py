"""The model file: one TorchScript archive with the networks and all metadata (SPEC §7).

The archive holds a scripted module with

- ``forward(b, species) -> chi``                 electronegativities (eV/e)
- ``short_energy(b, q, species) -> e_short``     per-atom short-range energies (eV)
- ``hardness() / widths() / e0()``               per-element J (eV/e^2), alpha (Å), E0 (eV)
- ``metadata() -> str``                          the JSON below

and the same JSON as the extra file ``snapqeq.json``: format name and version, elements,
descriptor parameters, hardness, widths, reference energies, unit convention, whether a
short-range network is present.  It loads with ``torch.jit.load`` (and libtorch) without
snapqeq installed; :func:`load_model` adds validation.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snapqeq import __version__
from snapqeq.model import CENT

FORMAT = "snapqeq-model"
FORMAT_VERSION = 1
METADATA_FILE = "snapqeq.json"
REQUIRED = ("format", "format_version", "elements", "descriptor", "hardness", "widths", "e0",
            "units", "has_short_range")
UNITS = {"energy": "eV", "length": "Angstrom", "charge": "e", "coulomb_constant": 14.399645}


@contextmanager
def _torchscript():
    """TorchScript is deprecated upstream in favour of torch.export, but it is what
    libtorch in the LAMMPS plugin loads; keep its deprecation warnings out of user logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


class ScriptableCENT(nn.Module):
    """TorchScript face of a trained :class:`snapqeq.model.CENT`."""

    def __init__(self, model: CENT, metadata_json: str):
        super().__init__()
        self.model = model
        self.meta = metadata_json

    def forward(self, b: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.model.electronegativity(b, species)

    @torch.jit.export
    def short_energy(self, b: torch.Tensor, q: torch.Tensor,
                     species: torch.Tensor) -> torch.Tensor:
        return self.model.short_energy(b, q, species)

    @torch.jit.export
    def hardness(self) -> torch.Tensor:
        return self.model.hardness()

    @torch.jit.export
    def widths(self) -> torch.Tensor:
        return self.model.widths

    @torch.jit.export
    def e0(self) -> torch.Tensor:
        return self.model.e0

    @torch.jit.export
    def metadata(self) -> str:
        return self.meta


def build_metadata(model: CENT, elements: list[str], descriptor: dict) -> dict:
    """Everything a calculator needs besides the networks."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "snapqeq_version": __version__,
        "elements": list(elements),
        "descriptor": descriptor,
        "hardness": model.hardness().detach().tolist(),
        "widths": model.widths.tolist(),
        "e0": model.e0.tolist(),
        "units": UNITS,
        "has_short_range": bool(model.has_short),
    }


def export_model(model: CENT, elements: list[str], descriptor: dict, path: str | Path,
                 overwrite: bool = False) -> Path:
    """Write the TorchScript model file; refuses to replace an existing file by default."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --force) to replace it")
    meta = json.dumps(build_metadata(model, elements, descriptor))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with _torchscript():
        scripted = torch.jit.script(ScriptableCENT(model.eval(), meta))
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: meta})
    tmp.replace(path)
    return path


@dataclass
class LoadedModel:
    """A validated model file: the scripted module and its metadata."""

    module: torch.jit.ScriptModule
    metadata: dict
    path: Path

    @property
    def elements(self) -> list[str]:
        return list(self.metadata["elements"])


def load_model(path: str | Path) -> LoadedModel:
    """Load and validate a model file (format name, version, required fields)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file not found: {path}")
    extra = {METADATA_FILE: ""}
    try:
        with _torchscript():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript model file: {err}") from None
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path} has no {METADATA_FILE}; it was not written by snapqeq export")
    meta = json.loads(extra[METADATA_FILE])
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{path}: model metadata lacks {missing}; re-export the model")
    if meta["format"] != FORMAT:
        raise ValueError(f"{path}: unknown model format {meta['format']!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model format version {meta['format_version']}, this snapqeq reads "
            f"version {FORMAT_VERSION}; re-export the model with snapqeq {__version__}")
    return LoadedModel(module, meta, path)
