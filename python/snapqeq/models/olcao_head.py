"""The OLCAO potential-coefficient model: MDN head + feature recipe, model file, prediction.

:class:`OLCAOModel` predicts, per site, the coefficients A_i (Hartree) of the site's OLCAO
potential function sum_i A_i exp(-alpha_i r^2) on the element's fixed exponent series
alpha_i (bohr^-2), as a mean and a standard deviation per coefficient (SPEC §6).  Its input
is one row of :meth:`snapqeq.models.site_features.SiteFeatures.matrix`: local bispectrum,
medium-range bispectrum and the long-range (q_i in e, phi_i in eV/e) block.

:func:`snapqeq.training.olcao.train_olcao_model` fits it to per-site targets.  By default
the network works in the principal axes of the training
deviations A - <A> in the L2 norm of the site potential (``output_basis="potential"``,
:func:`gaussian_overlap`): the Gaussian coefficients are strongly correlated and
ill-conditioned (large oscillating A_i whose combinations hardly change V(r)), so fitting
them one by one wastes the model on directions OLCAO's potential does not see.  The basis
change is part of the scripted module; its inputs and outputs stay in Hartree.

The model file (:func:`export_olcao_model`, :func:`load_olcao_model`) is a TorchScript
archive with ``forward(x, species) -> (mean, std)``, ``nll(x, species, target)`` and
``metadata()``, plus the same JSON as the extra file ``snapqeq.json`` (format
``"snapqeq-olcao-model"``, version 1): elements, feature recipe (both descriptor parameter
sets and the QEq settings), exponent series per element, mixture size, units.  It loads with
``torch.jit.load`` without snapqeq installed.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch import nn

from snapqeq import __version__
from snapqeq.io.archive import METADATA_FILE, LoadedArchive, read_archive, write_archive
from snapqeq.io.olcao import exponent_series
from snapqeq.models.mdn import MixtureDensityHead
from snapqeq.models.site_features import FeatureRecipe, SiteFeatures, SiteFeaturizer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "LoadedOLCAOModel",
    "OLCAOModel",
    "export_olcao_model",
    "gaussian_overlap",
    "load_olcao_model",
    "predict_sites",
]

FORMAT = "snapqeq-olcao-model"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "elements", "features", "exponents", "n_inputs",
            "n_components", "hidden", "units")
OUTPUT_BASES = ("potential", "coefficients")
UNITS = {"coefficients": "Hartree", "exponents": "bohr^-2", "length": "Angstrom",
         "charge": "e", "potential": "eV/e"}


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class OLCAOModel(nn.Module):
    """MDN head with the metadata needed to compute its inputs and use its outputs.

    Parameters
    ----------
    recipe : FeatureRecipe
        Site features (fixes the element order and the input width).
    exponents : mapping, optional
        Per-element overrides of OLCAO's exponent series, e.g. ``{"Si": (16, 0.15, 1e6)}``
        (see :func:`snapqeq.io.olcao.exponent_series`); default OLCAO's element database.
    hidden : list of int
        Hidden layer sizes of each element's network.
    n_components : int
        Mixture components K.
    energy_fingerprint : str, optional
        :func:`snapqeq.models.site_features.energy_model_fingerprint` of the energy model that
        supplies chi (recipes with ``chi_source="energy_model"``).

    Notes
    -----
    ``forward(x, species)`` takes x (N, n_inputs) float64 features and species (N,) int64
    element indices and returns (mean, std), each (N, D) in Hartree with D the longest
    series; entries beyond an element's series are NaN.  It is TorchScript-compatible and
    can be called from another scripted module.

    A model can be a deep ensemble (:meth:`add_members`): ``head`` plus the heads in
    ``members``, networks trained from different seeds on the same data.  The prediction
    is then the equal-weight mixture of the members: mean the average of their means,
    variance the average of their variances plus the variance of their means (law of total
    variance), so sigma grows where the networks disagree, typically away from the training
    data.  ``ensemble_std_scale`` (E, D) multiplies the final std (1 = none); it is meant
    for a recalibration from out-of-fold residuals of the training structures.
    """

    # Python-side training records; not part of the scripted module
    __jit_ignored_attributes__ = ["history", "summary", "recipe", "alphas", "_meta_dict"]
    __jit_unused_properties__ = ["elements", "n_out"]

    def __init__(self, recipe: FeatureRecipe, exponents: Mapping | None = None,
                 hidden: Sequence[int] = (32, 32), n_components: int = 3,
                 energy_fingerprint: str | None = None):
        super().__init__()
        self.recipe = recipe
        elements = recipe.elements
        self.alphas = {e: exponent_series(e, overrides=exponents) for e in elements}
        self.head = MixtureDensityHead(len(elements), recipe.n_features,
                                       [len(self.alphas[e]) for e in elements],
                                       list(hidden), n_components)
        self.members = nn.ModuleList()  # further ensemble members (add_members)
        self.register_buffer("ensemble_std_scale",
                             torch.ones(len(elements), self.head.d, dtype=torch.float64))
        self.history = []  # loss per epoch, filled by train_olcao_model
        self.summary = {}  # train / validation metrics
        self._meta_dict = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "snapqeq_version": __version__,
            "elements": elements,
            "features": recipe.to_dict(),
            "feature_names": recipe.feature_names(),
            "exponents": {e: a.tolist() for e, a in self.alphas.items()},
            "n_inputs": recipe.n_features,
            "n_components": int(n_components),
            "hidden": [int(h) for h in hidden],
            "units": UNITS,
            "energy_model_fingerprint": energy_fingerprint,
            "training": {},
        }
        self.meta = json.dumps(self._meta_dict)

    def forward(self, x: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.head.predict(x, species)
        if len(self.members) > 0:
            means, variances = [mean], [std**2]
            for member in self.members:
                m, s = member.predict(x, species)
                means.append(m)
                variances.append(s**2)
            stacked = torch.stack(means)
            mean = stacked.mean(0)
            std = torch.sqrt(torch.stack(variances).mean(0) + stacked.var(0, unbiased=False))
        return mean, std * self.ensemble_std_scale[species]

    @torch.jit.export
    def nll(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per site of standardised targets (Hartree in), of
        the first network (``head``; the training objective of every member)."""
        return self.head.nll(x, species, target)

    def add_members(self, others: Sequence[OLCAOModel]) -> None:
        """Turn this model into a deep ensemble with the networks of ``others`` (trained on
        the same data with other seeds; same feature recipe, exponents and elements).  The
        networks are copied; see the class docstring for how they are combined."""
        for other in others:
            if (other.recipe != self.recipe or other.head.d != self.head.d
                    or any(not np.array_equal(other.alphas[e], a)
                           for e, a in self.alphas.items())):
                raise ValueError("ensemble members need the same feature recipe, elements "
                                 "and exponent series")
            self.members.append(copy.deepcopy(other.head))
        self._meta_dict["ensemble_members"] = 1 + len(self.members)
        self.meta = json.dumps(self._meta_dict)

    @torch.jit.export
    def metadata(self) -> str:
        return self.meta

    # ------------------------------------------------------------- Python side
    @property
    def elements(self) -> list[str]:
        return self.recipe.elements

    @property
    def n_out(self) -> int:
        """D: the longest exponent series (width of the outputs)."""
        return self.head.d

    def set_training_info(self, info: dict) -> None:
        """Record a JSON-able training summary in the metadata."""
        self._meta_dict["training"] = json.loads(json.dumps(info))
        self.meta = json.dumps(self._meta_dict)

    def predict_features(self, features: SiteFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) in Hartree, (N, D) each, for precomputed site features."""
        x = torch.as_tensor(features.for_recipe(self.recipe), dtype=torch.float64)
        with torch.no_grad():
            mean, std = self(x, torch.as_tensor(features.species))
        return mean.numpy(), std.numpy()


def gaussian_overlap(alphas: np.ndarray) -> np.ndarray:
    """Overlap matrix S_ij = integral exp(-(alpha_i + alpha_j) r^2) d^3r
    = (pi / (alpha_i + alpha_j))^(3/2) (bohr^3) of one site's Gaussians (alpha in
    bohr^-2): dA^T S dA is the squared L2 norm (Hartree^2 bohr^3) of the site potential
    change sum_i dA_i exp(-alpha_i r^2)."""
    a = np.asarray(alphas, dtype=float)
    return (np.pi / (a[:, None] + a[None, :])) ** 1.5



# --------------------------------------------------------------------------------------------
# Model file
# --------------------------------------------------------------------------------------------


def export_olcao_model(model: OLCAOModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write the TorchScript OLCAO model file; refuses to replace a file by default."""
    return write_archive(model, model.meta, path, overwrite)


@dataclass
class LoadedOLCAOModel(LoadedArchive):
    """A validated OLCAO model file: the scripted module and its metadata."""

    @property
    def recipe(self) -> FeatureRecipe:
        return FeatureRecipe.from_dict(self.metadata["features"])

    @property
    def exponents(self) -> dict[str, np.ndarray]:
        """alpha_i per element (bohr^-2)."""
        return {e: np.asarray(a, dtype=float) for e, a in self.metadata["exponents"].items()}

    def __call__(self, x: torch.Tensor,
                 species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module(x, species)


def load_olcao_model(path: str | Path) -> LoadedOLCAOModel:
    """Load and validate an OLCAO model file (format name, version, required fields)."""
    module, meta = read_archive(path, FORMAT, FORMAT_VERSION, REQUIRED, what="OLCAO model")
    path = Path(path)
    try:
        recipe = FeatureRecipe.from_dict(meta["features"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid feature recipe: {err}") from None
    if recipe.elements != list(meta["elements"]) or recipe.n_features != meta["n_inputs"]:
        raise ValueError(f"{path}: feature recipe disagrees with elements / n_inputs")
    if set(meta["exponents"]) != set(meta["elements"]):
        raise ValueError(f"{path}: exponent series missing for some elements")
    return LoadedOLCAOModel(module, meta, path)


def _as_predictor(model) -> tuple[object, dict]:
    """(callable(x, species) -> (mean, std), metadata dict) of any supported model."""
    if isinstance(model, (str, Path)):
        model = load_olcao_model(model)
    if isinstance(model, LoadedOLCAOModel):
        return model.module, model.metadata
    if isinstance(model, OLCAOModel):
        return model, json.loads(model.meta)
    raise TypeError(f"expected an OLCAOModel, LoadedOLCAOModel or path, got {type(model)}")


def predict_sites(model, atoms: Atoms, energy_model=None, *,
                  featurizer: SiteFeaturizer | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Predicted coefficients of every site of a structure.

    Parameters
    ----------
    model : OLCAOModel, LoadedOLCAOModel or path of a model file
    atoms : Atoms
        The structure (total charge from ``atoms.info["charge"]`` if set).
    energy_model : path or LoadedModel, optional
        Needed when the model's features take chi from an energy model.

    Returns
    -------
    mean, std : (N, D) Hartree, NaN beyond an element's series
    exponents : dict element -> alpha_i (bohr^-2)
    """
    module, meta = _as_predictor(model)
    recipe = FeatureRecipe.from_dict(meta["features"])
    if featurizer is None:
        featurizer = SiteFeaturizer(recipe, energy_model)
    expected = meta.get("energy_model_fingerprint")
    if (expected and featurizer.energy_fingerprint
            and featurizer.energy_fingerprint != expected):
        warnings.warn("the energy model differs from the one the OLCAO model was trained "
                      "with (metadata fingerprint mismatch); chi, q and phi may be off",
                      stacklevel=2)
    feats = featurizer(atoms)
    x = torch.as_tensor(feats.for_recipe(recipe), dtype=torch.float64)
    with torch.no_grad():
        mean, std = module(x, torch.as_tensor(feats.species, dtype=torch.int64))
    exponents = {e: np.asarray(a, dtype=float) for e, a in meta["exponents"].items()}
    return mean.numpy(), std.numpy(), exponents
