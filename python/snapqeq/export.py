"""The model file: one TorchScript archive with the networks and all metadata (SPEC §7).

The archive holds a scripted module with

- ``forward(b, species) -> chi``                 electronegativities (eV/e)
- ``short_energy(b, q, species) -> e_short``     per-atom short-range energies (eV)
- ``hardness() / widths() / e0()``               per-element J (eV/e^2), alpha (Å), E0 (eV)
- ``metadata() -> str``                          the JSON below

and, for a model with an OLCAO head (:class:`snapqeq.olcao_model.OLCAOModel`, trained on
this model's charges), also

- ``potential_coefficients(x, species) -> (mean, std)``  per-site A_i (Hartree), x the
  site features of the head's recipe (:class:`snapqeq.site_features.SiteFeatures`)

and the same JSON as the extra file ``snapqeq.json``: format name and version, elements,
descriptor parameters, hardness, widths, reference energies, unit convention, whether a
short-range network is present, and ``olcao`` (the head's own metadata: feature recipe,
exponent series, mixture size) or null.  It loads with ``torch.jit.load`` (and libtorch)
without snapqeq installed; :func:`load_model` adds validation.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snapqeq import __version__
from snapqeq.archive import METADATA_FILE, quiet_torchscript, read_archive, write_archive
from snapqeq.bispectrum import Bispectrum
from snapqeq.guard import GUARD_DEFAULTS, training_envelope
from snapqeq.model import CENT
from snapqeq.olcao_model import OLCAOModel
from snapqeq.site_features import energy_model_fingerprint

__all__ = ["ENVELOPE_KEYS", "FORMAT", "FORMAT_VERSION", "METADATA_FILE", "LoadedModel",
           "ScriptableCENT", "ScriptableCENTWithOLCAO", "build_metadata",
           "copy_training_envelope", "export_model", "is_training_checkpoint", "load_model"]

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


class ScriptableCENTWithOLCAO(ScriptableCENT):
    """:class:`ScriptableCENT` with the per-site OLCAO potential-coefficient head."""

    def __init__(self, model: CENT, metadata_json: str, olcao: OLCAOModel):
        super().__init__(model, metadata_json)
        self.olcao = olcao

    @torch.jit.export
    def potential_coefficients(self, x: torch.Tensor,
                               species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.olcao(x, species)


def build_metadata(model: CENT, elements: list[str], descriptor: dict,
                   min_distances: dict | None = None, envelope: dict | None = None) -> dict:
    """Everything a calculator needs besides the networks (``olcao`` is set on export).

    ``min_distances``: shortest distance (Angstrom) per element pair ``"A-B"`` in the
    training data (:func:`snapqeq.data.training_distances`), or None if unknown.
    ``envelope``: ``descriptor_range`` and ``total_charge_range`` of the training data
    (:func:`snapqeq.guard.training_envelope`), or None if unknown.  Together with the
    thresholds ``guard`` they drive :class:`snapqeq.guard.Guard` and the same checks of
    ``pair_style snapqeq``.
    """
    envelope = envelope or {}
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
        "min_distances": dict(min_distances) if min_distances else None,
        "descriptor_range": envelope.get("descriptor_range") or None,
        "total_charge_range": envelope.get("total_charge_range"),
        "guard": dict(GUARD_DEFAULTS),
        "olcao": None,
    }


def export_model(model: CENT, elements: list[str], descriptor: dict, path: str | Path,
                 overwrite: bool = False, olcao: OLCAOModel | None = None,
                 min_distances: dict | None = None, envelope: dict | None = None,
                 training_samples: list | None = None) -> Path:
    """Write the TorchScript model file; refuses to replace an existing file by default.

    ``min_distances`` and ``envelope``: the training data's envelope (see
    :func:`build_metadata`), which the geometry/extrapolation guard checks;
    ``training_samples`` (:class:`snapqeq.data.Sample` list): compute ``envelope`` from
    them (:func:`snapqeq.guard.training_envelope`).

    ``olcao``: an OLCAO head to include; it must have been trained on the charges of this
    energy model (its recipe takes chi from the energy model, and the metadata fingerprint
    it recorded must match), since the calculator feeds it this model's q and phi.
    """
    if envelope is None and training_samples:
        n_linear = Bispectrum.from_dict(descriptor).n_linear
        envelope = training_envelope(training_samples, n_linear, list(elements))
    meta = build_metadata(model, elements, descriptor, min_distances, envelope)
    if olcao is None:
        text = json.dumps(meta)
        return write_archive(ScriptableCENT(model, text), text, path, overwrite)
    recipe = olcao.recipe
    if recipe.elements != list(elements):
        raise ValueError(f"OLCAO head elements {recipe.elements} differ from the model's "
                         f"{list(elements)}")
    if recipe.long_range and recipe.chi_source != "energy_model":
        raise ValueError("an OLCAO head inside the model file must take chi from the energy "
                         "model (recipe chi_source='energy_model')")
    head_meta = json.loads(olcao.meta)
    trained_on = head_meta.get("energy_model_fingerprint")
    if recipe.long_range and trained_on != energy_model_fingerprint(meta):
        raise ValueError("the OLCAO head was trained with a different energy model "
                         "(metadata fingerprint mismatch); retrain it on this model")
    meta["olcao"] = head_meta
    text = json.dumps(meta)
    return write_archive(ScriptableCENTWithOLCAO(model, text, olcao), text, path, overwrite)


ENVELOPE_KEYS = ("min_distances", "descriptor_range", "total_charge_range", "guard")


def copy_training_envelope(source: str | Path, target: str | Path) -> bool:
    """Give the model file ``target`` the training envelope (:data:`ENVELOPE_KEYS`) of
    ``source``, a model file of the same training run (e.g. the ``model.pt`` that
    ``snapqeq train`` wrote, for a checkpoint exported later: the envelope is a property
    of the training data, not of the epoch).  Returns True if ``target`` was rewritten;
    the networks are untouched."""
    src, dst = load_model(source).metadata, load_model(target)
    if src["elements"] != dst.metadata["elements"] or \
            src["descriptor"] != dst.metadata["descriptor"]:
        raise ValueError(f"{source} and {target} are not models of the same descriptor")
    missing = [k for k in ENVELOPE_KEYS if src.get(k) and not dst.metadata.get(k)]
    if not missing:
        return False
    meta = dict(dst.metadata, **{k: src[k] for k in missing})
    text = json.dumps(meta)
    module = dst.module
    module.meta = text  # what metadata() returns, as written by ScriptableCENT
    tmp = Path(target).with_suffix(Path(target).suffix + ".tmp")
    with quiet_torchscript():
        torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: text})
    tmp.replace(target)
    return True


@dataclass
class LoadedModel:
    """A validated model file: the scripted module and its metadata."""

    module: torch.jit.ScriptModule
    metadata: dict
    path: Path

    @property
    def elements(self) -> list[str]:
        return list(self.metadata["elements"])

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
    return LoadedModel(module, meta, Path(path))
