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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snapqeq import __version__
from snapqeq.archive import METADATA_FILE, read_archive, write_archive
from snapqeq.model import CENT

__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_FILE", "LoadedModel", "ScriptableCENT",
           "build_metadata", "export_model", "load_model"]

FORMAT = "snapqeq-model"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "elements", "descriptor", "hardness", "widths", "e0",
            "units", "has_short_range")
UNITS = {"energy": "eV", "length": "Angstrom", "charge": "e", "coulomb_constant": 14.399645}


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
    meta = json.dumps(build_metadata(model, elements, descriptor))
    return write_archive(ScriptableCENT(model, meta), meta, path, overwrite)


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
    module, meta = read_archive(path, FORMAT, FORMAT_VERSION, REQUIRED)
    return LoadedModel(module, meta, Path(path))
