"""The model file: one TorchScript archive with the networks and all metadata (SPEC §7).

The archive holds a scripted module with

- ``forward(b, species) -> chi``                 electronegativities (eV/e)
- ``short_energy(b, q, species) -> e_short``     per-atom short-range energies (eV)
- ``hardness() / widths() / e0()``               per-element J (eV/e^2), alpha (Å), E0 (eV)
- ``metadata() -> str``                          the JSON below

and, for a model with an OLCAO head (:class:`snapqeq.models.olcao_head.OLCAOModel`, trained on
this model's charges), also

- ``potential_coefficients(x, species) -> (mean, std)``  per-site A_i (Hartree), x the
  site features of the head's recipe (:class:`snapqeq.models.site_features.SiteFeatures`)

and the same JSON as the extra file ``snapqeq.json``: format name and version, elements,
descriptor parameters, hardness, widths, reference energies, unit convention, whether a
short-range network is present, and ``olcao`` (the head's own metadata: feature recipe,
exponent series, mixture size) or null.  The JSON Schema
``model_file.schema.json`` (:data:`snapqeq.io.model_file.SCHEMA`) defines the record: every
key is required, and every writer here validates the record before it writes it.  It loads
with ``torch.jit.load`` (and libtorch) without snapqeq installed;
:func:`snapqeq.io.model_file.load_model` adds validation.

A committee file (:func:`export_committee`, written by ``snapqeq train`` with
``committee: n``) holds n complete models of the same descriptor and elements
(:class:`ScriptableCommittee`) with the per-member methods

- ``members() -> int``                                     n
- ``member_chi(k, b, species) -> chi``                     member k's chi (eV/e)
- ``member_short_energy(k, b, q, species) -> e_short``     member k's short-range energies
- ``member_hardness(k) / member_widths(k) / member_e0(k)`` member k's J, alpha, E0
  (together: ``member_parameters(k)``)

and the metadata keys ``committee`` (n; 1 for a single model) and ``members``
(per member: ``hardness``, ``widths``, ``e0``; null for a single model).  The single-model
methods and the top-level ``hardness`` / ``widths`` / ``e0`` are those of member 0, so
that a reader that does not know committees sees member 0, a complete model of its own.
The members share the widths (the electrostatics matrix) and whether they have a
short-range network; the format version stays 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from snapqeq import __version__
from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.io.archive import METADATA_FILE, quiet_torchscript, write_archive
from snapqeq.io.model_file import (
    FORMAT,
    FORMAT_VERSION,
    load_model,
    validate_metadata,
)
from snapqeq.models.cent import CENT
from snapqeq.models.guard import GUARD_DEFAULTS, training_envelope
from snapqeq.models.olcao_head import OLCAOModel
from snapqeq.models.site_features import energy_model_fingerprint
from snapqeq.units import COULOMB

__all__ = ["ENVELOPE_KEYS", "ScriptableCENT", "ScriptableCENTWithOLCAO", "ScriptableCommittee",
           "build_metadata", "copy_training_envelope", "export_committee", "export_model",
           "merge_envelopes"]

UNITS = {"energy": "eV", "length": "Angstrom", "charge": "e", "coulomb_constant": COULOMB}


class ScriptableCENT(nn.Module):
    """TorchScript face of a trained :class:`snapqeq.models.cent.CENT`."""

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


class ScriptableCommittee(nn.Module):
    """TorchScript face of a committee of :class:`snapqeq.models.cent.CENT` models (see the
    module docstring); the single-model methods are member 0's."""

    def __init__(self, models: list[CENT], metadata_json: str):
        super().__init__()
        self.committee = nn.ModuleList(models)
        self.n_members = len(models)
        self.meta = metadata_json

    @torch.jit.export
    def members(self) -> int:
        return self.n_members

    def _check(self, k: int) -> None:
        if k < 0 or k >= self.n_members:
            raise ValueError("committee member index out of range")

    @torch.jit.export
    def member_chi(self, k: int, b: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        self._check(k)
        out = torch.empty(0, dtype=b.dtype)
        for i, m in enumerate(self.committee):
            if i == k:
                out = m.electronegativity(b, species)
        return out

    @torch.jit.export
    def member_short_energy(self, k: int, b: torch.Tensor, q: torch.Tensor,
                            species: torch.Tensor) -> torch.Tensor:
        self._check(k)
        out = torch.empty(0, dtype=b.dtype)
        for i, m in enumerate(self.committee):
            if i == k:
                out = m.short_energy(b, q, species)
        return out

    @torch.jit.export
    def member_parameters(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Member k's hardness J (eV/e^2), widths alpha (Angstrom), E0 (eV) per element."""
        self._check(k)
        empty = torch.empty(0, dtype=torch.float64)
        out = (empty, empty, empty)
        for i, m in enumerate(self.committee):
            if i == k:
                out = (m.hardness(), m.widths, m.e0)
        return out

    @torch.jit.export
    def member_hardness(self, k: int) -> torch.Tensor:
        return self.member_parameters(k)[0]

    @torch.jit.export
    def member_widths(self, k: int) -> torch.Tensor:
        return self.member_parameters(k)[1]

    @torch.jit.export
    def member_e0(self, k: int) -> torch.Tensor:
        return self.member_parameters(k)[2]

    def forward(self, b: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.member_chi(0, b, species)

    @torch.jit.export
    def short_energy(self, b: torch.Tensor, q: torch.Tensor,
                     species: torch.Tensor) -> torch.Tensor:
        return self.member_short_energy(0, b, q, species)

    @torch.jit.export
    def hardness(self) -> torch.Tensor:
        return self.member_hardness(0)

    @torch.jit.export
    def widths(self) -> torch.Tensor:
        return self.member_widths(0)

    @torch.jit.export
    def e0(self) -> torch.Tensor:
        return self.member_e0(0)

    @torch.jit.export
    def metadata(self) -> str:
        return self.meta


def build_metadata(model: CENT, elements: list[str], descriptor: dict,
                   min_distances: dict | None = None, envelope: dict | None = None) -> dict:
    """Everything a calculator needs besides the networks (``olcao`` is set on export).

    ``min_distances``: shortest distance (Angstrom) per element pair ``"A-B"`` in the
    training data (:func:`snapqeq.training.data.training_distances`), or None if unknown.
    ``envelope``: ``descriptor_range`` and ``total_charge_range`` of the training data
    (:func:`snapqeq.models.guard.training_envelope`), or None if unknown.  Together with the
    thresholds ``guard`` they drive :class:`snapqeq.models.guard.Guard` and the same checks of
    ``pair_style snapqeq``.
    """
    envelope = envelope or {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "snapqeq_version": __version__,
        "elements": list(elements),
        # every parameter, the defaults of snapqeq.Bispectrum filled in: readers apply none
        "descriptor": Bispectrum.from_dict(descriptor).to_dict(),
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
        "committee": 1,
        "members": None,
    }


def _metadata_json(meta: dict) -> str:
    """The record as written: validated against the schema first (a ValueError names the
    offending key: a bug of the writer, not of the user's input)."""
    validate_metadata(meta, "metadata to be written")
    return json.dumps(meta)


def export_model(model: CENT, elements: list[str], descriptor: dict, path: str | Path,
                 overwrite: bool = False, olcao: OLCAOModel | None = None,
                 min_distances: dict | None = None, envelope: dict | None = None,
                 training_samples: list | None = None) -> Path:
    """Write the TorchScript model file; refuses to replace an existing file by default.

    ``min_distances`` and ``envelope``: the training data's envelope (see
    :func:`build_metadata`), which the geometry/extrapolation guard checks;
    ``training_samples`` (:class:`snapqeq.training.data.Sample` list): compute ``envelope`` from
    them (:func:`snapqeq.models.guard.training_envelope`).

    ``olcao``: an OLCAO head to include; it must have been trained on the charges of this
    energy model (its recipe takes chi from the energy model, and the metadata fingerprint
    it recorded must match), since the calculator feeds it this model's q and phi.
    """
    if envelope is None and training_samples:
        n_linear = Bispectrum.from_dict(descriptor).n_linear
        envelope = training_envelope(training_samples, n_linear, list(elements))
    meta = build_metadata(model, elements, descriptor, min_distances, envelope)
    if olcao is None:
        text = _metadata_json(meta)
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
    text = _metadata_json(meta)
    return write_archive(ScriptableCENTWithOLCAO(model, text, olcao), text, path, overwrite)


def merge_envelopes(metadata: list[dict]) -> tuple[dict | None, dict]:
    """The union of the training envelopes of several model files' metadata (members of a
    committee trained on different splits): the shortest distance per element pair, the
    widest bispectrum range per element and component, the widest total-charge range.
    Returns ``(min_distances, envelope)`` for :func:`export_model` /
    :func:`export_committee`; a key missing from any file is left out (None)."""
    def every(key):
        values = [m.get(key) for m in metadata]
        return values if values and all(values) else None

    dists = every("min_distances")
    min_distances = None if dists is None else {
        pair: min(d[pair] for d in dists) for pair in dists[0] if all(pair in d for d in dists)}
    ranges = every("descriptor_range")
    descriptor_range = None if ranges is None else {
        el: {"min": np.min([r[el]["min"] for r in ranges], axis=0).tolist(),
             "max": np.max([r[el]["max"] for r in ranges], axis=0).tolist()}
        for el in ranges[0] if all(el in r for r in ranges)}
    charges = every("total_charge_range")
    total = None if charges is None else [min(c[0] for c in charges), max(c[1] for c in charges)]
    return min_distances, {"descriptor_range": descriptor_range, "total_charge_range": total}


def export_committee(models: list[CENT], elements: list[str], descriptor: dict,
                     path: str | Path, overwrite: bool = False,
                     min_distances: dict | None = None, envelope: dict | None = None,
                     training_samples: list | None = None) -> Path:
    """Write one model file holding a committee of ``models`` (see the module docstring).

    The members must share the elements, the descriptor (so the number of features), the
    Gaussian widths and the presence of a short-range network; hardness and reference
    energies may differ.  ``min_distances``, ``envelope`` and ``training_samples`` as in
    :func:`export_model` (the committee's training envelope, e.g. :func:`merge_envelopes`
    of the members' files).  A committee of one model is written as a single model file.
    """
    models = list(models)
    if not models:
        raise ValueError("a committee needs at least one model")
    if len(models) == 1:
        return export_model(models[0], elements, descriptor, path, overwrite,
                            min_distances=min_distances, envelope=envelope,
                            training_samples=training_samples)
    first = models[0]
    for k, m in enumerate(models[1:], start=1):
        if (m.n_elements, m.n_features, m.has_short) != \
                (first.n_elements, first.n_features, first.has_short):
            raise ValueError(f"committee member {k} differs from member 0 in its elements, "
                             "descriptor size or short-range network")
        if not torch.equal(m.widths, first.widths):
            raise ValueError(f"committee member {k} has other Gaussian widths than member 0 "
                             f"({m.widths.tolist()} vs {first.widths.tolist()}); the members "
                             "must share them")
    if envelope is None and training_samples:
        n_linear = Bispectrum.from_dict(descriptor).n_linear
        envelope = training_envelope(training_samples, n_linear, list(elements))
    meta = build_metadata(first, elements, descriptor, min_distances, envelope)
    meta["committee"] = len(models)
    meta["members"] = [{"hardness": m.hardness().detach().tolist(), "widths": m.widths.tolist(),
                        "e0": m.e0.tolist()} for m in models]
    text = _metadata_json(meta)
    return write_archive(ScriptableCommittee(models, text), text, path, overwrite)


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
    text = _metadata_json(meta)
    module = dst.module
    module.meta = text  # what metadata() returns, as written by ScriptableCENT
    tmp = Path(target).with_suffix(Path(target).suffix + ".tmp")
    with quiet_torchscript():
        torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: text})
    tmp.replace(target)
    return True


