"""Per-site input features of the OLCAO potential-coefficient model (SPEC §6).

The PEARC'23 paper asks for local, medium-range and long-range (global) information per
site.  Here that is, for every atom i of a structure:

=============  ===================================================  =====================
block          quantity                                             unit
=============  ===================================================  =====================
local          SNAP bispectrum B_i at the model cutoff              dimensionless
medium         a second bispectrum with a larger ``rcutfac``        dimensionless
long range     QEq charge q_i and electrostatic potential phi_i     e and eV/e (= V)
=============  ===================================================  =====================

q and phi come from :func:`snapqeq.electrostatics.qeq.equilibrate` (Gaussian charges, Ewald sums for
periodic cells, compensating background for net-charged cells) with electronegativities
chi_i either predicted by a trained energy model (the CENT network of a ``snapqeq`` model
file, with its own descriptor, hardness and widths) or fixed per element by the recipe.
phi_i = dE_es/dq_i is the potential of all other charges plus the Gaussian self term, in
the convention of :mod:`snapqeq.electrostatics.ewald` (zero at infinity for clusters; Ewald average
for periodic cells).  With fixed chi that is equal for all atoms of a neutral structure (e.g.
pure Si) the solution is q = 0 and phi = 0: the long-range block then carries no
information, which is correct; it matters for ionic and charged systems.

Lengths are in Angstrom throughout; OLCAO's atomic units appear only in :mod:`snapqeq.io.olcao`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.electrostatics.qeq import equilibrate, total_charge_of
from snapqeq.io.model_file import LoadedModel, load_model

__all__ = [
    "CHI_SOURCES",
    "FeatureRecipe",
    "SiteFeatures",
    "SiteFeaturizer",
    "compute_site_features",
    "energy_model_fingerprint",
    "recipe_from_energy_model",
    "species_index",
]

CHI_SOURCES = ("fixed", "energy_model")
"""Where the electronegativities of the long-range block come from."""

@dataclass(frozen=True)
class FeatureRecipe:
    """How to compute the site features; stored in the OLCAO model file.

    Attributes
    ----------
    local : dict
        Bispectrum parameters at the model cutoff (keywords of :class:`Bispectrum`:
        ``twojmax``, ``rcutfac``, ``radii`` (Angstrom), ``weights``, flags).  The order of
        ``radii`` is the element order of the model.
    medium : dict or None
        Parameters of the medium-range bispectrum (same elements, typically a larger
        ``rcutfac`` and a smaller ``twojmax``); None leaves the block out.
    long_range : bool
        Include (q_i, phi_i).
    chi_source : {"fixed", "energy_model"}
        Electronegativities from ``chi`` below, or from a trained energy model (which then
        also supplies hardness and widths and must be given whenever features are made).
    chi : dict element -> float, eV/e
    hardness : dict element -> float, eV/e^2 (> 0)
    widths : dict element -> float, Gaussian width alpha in Angstrom (> 0)
        QEq parameters for ``chi_source="fixed"``.
    """

    local: dict
    medium: dict | None = None
    long_range: bool = True
    chi_source: str = "fixed"
    chi: dict | None = None
    hardness: dict | None = None
    widths: dict | None = None
    _elements: tuple = field(init=False, repr=False, compare=False)
    _sizes: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        local = Bispectrum.from_dict(self.local)
        elements = tuple(local.elements)
        n_medium = 0
        if self.medium is not None:
            medium = Bispectrum.from_dict(self.medium)
            if tuple(medium.elements) != elements:
                raise ValueError(f"medium-range descriptor elements {list(medium.elements)} "
                                 f"differ from the local ones {list(elements)}")
            n_medium = medium.n_components
        if self.chi_source not in CHI_SOURCES:
            raise ValueError(f"chi_source must be one of {CHI_SOURCES}, got {self.chi_source!r}")
        if self.long_range and self.chi_source == "fixed":
            for name, positive in (("chi", False), ("hardness", True), ("widths", True)):
                values = getattr(self, name)
                if values is None:
                    raise ValueError(f"long-range features with fixed chi need {name!r} per "
                                     f"element (elements {list(elements)})")
                missing = sorted(set(elements) - set(values))
                if missing:
                    raise ValueError(f"{name} lacks elements {missing}")
                bad = [e for e in elements if not np.isfinite(values[e])
                       or (positive and values[e] <= 0)]
                if bad:
                    raise ValueError(f"{name} of {bad} must be finite"
                                     + (" and positive" if positive else ""))
        object.__setattr__(self, "_elements", elements)
        object.__setattr__(self, "_sizes", (local.n_components, n_medium))

    @classmethod
    def default(cls, elements: Sequence[str], cutoff: float = 4.5, medium_cutoff: float = 7.5,
                twojmax: int = 6, medium_twojmax: int = 4,
                weights: Mapping[str, float] | None = None, long_range: bool = True,
                chi: Mapping[str, float] | None = None,
                hardness: Mapping[str, float] | None = None,
                widths: Mapping[str, float] | None = None) -> FeatureRecipe:
        """A recipe with one cutoff for all element pairs.

        ``cutoff`` and ``medium_cutoff`` (Angstrom) are the pair cutoffs 2 rcutfac R of the
        two bispectra (R = cutoff / 2 for every element).  Without ``chi`` / ``hardness`` /
        ``widths`` the QEq parameters default to chi = 0 eV/e, J = 10 eV/e^2 and
        alpha = 1 Angstrom for every element (q = 0 for a neutral structure).
        """
        elements = list(elements)
        if not elements or medium_cutoff <= 0 or cutoff <= 0:
            raise ValueError("need elements and positive cutoffs")
        radii = {e: cutoff / 2.0 for e in elements}
        w = {e: 1.0 for e in elements} if weights is None else {e: weights[e] for e in elements}
        local = {"twojmax": twojmax, "rcutfac": 1.0, "radii": radii, "weights": w}
        medium = {"twojmax": medium_twojmax, "rcutfac": medium_cutoff / cutoff,
                  "radii": radii, "weights": w}
        return cls(local=local, medium=medium, long_range=long_range,
                   chi=dict(chi) if chi is not None else {e: 0.0 for e in elements},
                   hardness=dict(hardness) if hardness is not None else
                   {e: 10.0 for e in elements},
                   widths=dict(widths) if widths is not None else {e: 1.0 for e in elements})

    # ------------------------------------------------------------------ layout
    @property
    def elements(self) -> list[str]:
        """Element order (species index e is ``elements[e]``)."""
        return list(self._elements)

    @property
    def n_local(self) -> int:
        return self._sizes[0]

    @property
    def n_medium(self) -> int:
        return self._sizes[1]

    @property
    def n_features(self) -> int:
        """Length of one row of :meth:`SiteFeatures.matrix` for this recipe."""
        return self.n_local + self.n_medium + (2 if self.long_range else 0)

    def feature_names(self) -> list[str]:
        names = [f"local_B{k}" for k in range(self.n_local)]
        names += [f"medium_B{k}" for k in range(self.n_medium)]
        return names + (["q", "phi"] if self.long_range else [])

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-able form (the ``features`` entry of the model metadata)."""
        d = asdict(self)
        d.pop("_elements", None)
        d.pop("_sizes", None)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureRecipe:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {"local", "medium", "long_range", "chi_source", "chi", "hardness", "widths"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown feature recipe keys {sorted(unknown)}")
        if "local" not in d:
            raise ValueError("feature recipe needs 'local' bispectrum parameters")
        return cls(**dict(d))

    def without_long_range(self) -> FeatureRecipe:
        """The same recipe with the (q, phi) block switched off."""
        return replace(self, long_range=False)


@dataclass
class SiteFeatures:
    """Features of the sites of one structure.

    Attributes
    ----------
    species : (N,) int64
        Element index into the recipe's element list.
    local : (N, K_local)
        Bispectrum at the model cutoff.
    medium : (N, K_medium)
        Medium-range bispectrum (K_medium = 0 when the recipe has none).
    charges : (N,) e
        QEq charges q_i (zeros when not computed).
    potential : (N,) eV/e
        Electrostatic site potential phi_i (zeros when not computed).
    has_long_range : bool
        Whether q and phi were computed (False for recipes without the long-range block).
    """

    species: np.ndarray
    local: np.ndarray
    medium: np.ndarray
    charges: np.ndarray
    potential: np.ndarray
    has_long_range: bool = True

    def __len__(self) -> int:
        return len(self.species)

    def matrix(self, long_range: bool = True) -> np.ndarray:
        """(N, F) model input: [local | medium | q phi] (the last block if ``long_range``)."""
        blocks = [self.local, self.medium]
        if long_range:
            blocks += [self.charges[:, None], self.potential[:, None]]
        return np.concatenate(blocks, axis=1)

    def for_recipe(self, recipe: FeatureRecipe) -> np.ndarray:
        """:meth:`matrix` checked against the layout of ``recipe``."""
        if recipe.long_range and not self.has_long_range:
            raise ValueError("these site features were computed without the long-range "
                             "(q, phi) block that the recipe uses")
        x = self.matrix(recipe.long_range)
        if x.shape[1] != recipe.n_features:
            raise ValueError(f"site features have {x.shape[1]} columns, the recipe expects "
                             f"{recipe.n_features}; compute them with the same recipe")
        return x


def species_index(atoms: Atoms, elements: Sequence[str]) -> np.ndarray:
    """Index of every atom's element in ``elements``; ValueError naming unknown ones."""
    index = {e: k for k, e in enumerate(elements)}
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(index))
    if unknown:
        raise ValueError(f"structure contains elements {unknown} the model does not know; "
                         f"known elements: {list(elements)}")
    return np.fromiter((index[s] for s in symbols), dtype=np.int64, count=len(symbols))


def energy_model_fingerprint(metadata: Mapping) -> str:
    """Short hash of an energy model's metadata (elements, descriptor, J, alpha, E0).

    Stored with an OLCAO model trained on chi from that energy model, so that a prediction
    with a different energy model can be flagged.  The network weights are not part of it.
    """
    keep = {k: metadata.get(k) for k in ("elements", "descriptor", "hardness", "widths", "e0",
                                          "has_short_range")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class SiteFeaturizer:
    """Computes :class:`SiteFeatures` of structures for one recipe.

    Parameters
    ----------
    recipe : FeatureRecipe
    energy_model : path or :class:`snapqeq.io.model_file.LoadedModel`, optional
        Required when ``recipe.chi_source == "energy_model"`` (and only then used): its
        electronegativity network gives chi_i, its hardness and widths enter the QEq.
    """

    def __init__(self, recipe: FeatureRecipe, energy_model=None):
        self.recipe = recipe
        self.local = Bispectrum.from_dict(recipe.local)
        self.medium = Bispectrum.from_dict(recipe.medium) if recipe.medium is not None else None
        self._energy = None
        self.energy_fingerprint: str | None = None
        if recipe.long_range and recipe.chi_source == "energy_model":
            if energy_model is None:
                raise ValueError("this feature recipe takes chi from an energy model; pass "
                                 "energy_model (the snapqeq model file it was trained with)")
            model = (energy_model if isinstance(energy_model, LoadedModel)
                     else load_model(energy_model))
            missing = sorted(set(recipe.elements) - set(model.elements))
            if missing:
                raise ValueError(f"the energy model does not know elements {missing}")
            self._energy = model
            self._energy_descriptor = Bispectrum.from_dict(model.metadata["descriptor"])
            self.energy_fingerprint = energy_model_fingerprint(model.metadata)

    def species(self, atoms: Atoms) -> np.ndarray:
        return self.local.species(atoms)

    def _qeq_parameters(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """chi (eV/e), J (eV/e^2), alpha (Angstrom) per atom."""
        if self._energy is not None:
            meta = self._energy.metadata
            sp = self._energy_descriptor.species(atoms)
            b = torch.as_tensor(self._energy_descriptor.compute(atoms))
            with torch.no_grad():
                chi = self._energy.module(b, torch.as_tensor(sp))
            return (chi.numpy().astype(float), np.asarray(meta["hardness"], float)[sp],
                    np.asarray(meta["widths"], float)[sp])
        r = self.recipe
        symbols = atoms.get_chemical_symbols()
        return (np.array([r.chi[s] for s in symbols], dtype=float),
                np.array([r.hardness[s] for s in symbols], dtype=float),
                np.array([r.widths[s] for s in symbols], dtype=float))

    def __call__(self, atoms: Atoms, chi: np.ndarray | None = None,
                 total_charge: float | None = None) -> SiteFeatures:
        """Features of one structure.

        Parameters
        ----------
        chi : (N,) array, eV/e, optional
            Electronegativities that replace those of the recipe or energy model (e.g. to
            represent dopants or applied fields the geometry does not show).
        total_charge : float, optional
            Total charge (e); default ``atoms.info["charge"]``, else the sum of the initial
            charges, else 0 (as in :class:`snapqeq.calculators.cent.SnapQEqCalculator`).
        """
        self.species(atoms)  # unknown elements: a clear error before any work
        n = len(atoms)
        q = np.zeros(n)
        phi = np.zeros(n)
        if self.recipe.long_range and n:
            x_chi, hardness, widths = self._qeq_parameters(atoms)
            if chi is not None:
                x_chi = np.asarray(chi, dtype=float).reshape(-1)
                if x_chi.shape != (n,) or not np.all(np.isfinite(x_chi)):
                    raise ValueError(f"chi must be {n} finite values (eV/e)")
            total = total_charge_of(atoms, total_charge)
            # uniform chi and Q = 0 give q = 0 and phi = A q = 0 exactly; skip the solve
            if not (abs(total) == 0.0 and np.ptp(x_chi) == 0.0):
                res = equilibrate(atoms, x_chi, hardness, widths, total_charge=total,
                                  compute_forces=False)
                q = np.asarray(res.charges, dtype=float)
                phi = np.asarray(res.potential, dtype=float)
        return self.assemble(atoms, q, phi)

    def assemble(self, atoms: Atoms, charges: np.ndarray, potential: np.ndarray,
                 local: np.ndarray | None = None) -> SiteFeatures:
        """Features from charges q (e) and potentials phi (eV/e) solved elsewhere (e.g. by
        the calculator of the energy model); ``local``: the local bispectrum if already
        computed with the recipe's parameters."""
        n = len(atoms)
        local = self.local.compute(atoms) if local is None else np.asarray(local)
        medium = self.medium.compute(atoms) if self.medium is not None else np.zeros((n, 0))
        return SiteFeatures(species=self.species(atoms), local=local, medium=medium,
                            charges=np.asarray(charges, dtype=float),
                            potential=np.asarray(potential, dtype=float),
                            has_long_range=self.recipe.long_range)

    def many(self, structures: Sequence[Atoms], progress: bool = False,
             chis: Sequence[np.ndarray | None] | None = None) -> list[SiteFeatures]:
        """Features of several structures (tqdm progress bar with ``progress``)."""
        from tqdm import tqdm

        chis = [None] * len(structures) if chis is None else list(chis)
        if len(chis) != len(structures):
            raise ValueError(f"{len(chis)} chi arrays for {len(structures)} structures")
        return [self(a, chi=c) for a, c in tqdm(list(zip(structures, chis, strict=True)),
                                                desc="site features", unit="structure",
                                                disable=not progress)]


def compute_site_features(atoms: Atoms, recipe: FeatureRecipe, energy_model=None, *,
                          chi: np.ndarray | None = None,
                          total_charge: float | None = None) -> SiteFeatures:
    """Features of one structure (convenience wrapper of :class:`SiteFeaturizer`)."""
    return SiteFeaturizer(recipe, energy_model)(atoms, chi=chi, total_charge=total_charge)


def recipe_from_energy_model(path: str | Path, **kwargs) -> FeatureRecipe:
    """A recipe whose local block is the energy model's own descriptor and whose chi comes
    from that model; ``kwargs`` go to :class:`FeatureRecipe` (e.g. ``medium``)."""
    meta = load_model(path).metadata
    return FeatureRecipe(local=dict(meta["descriptor"]), chi_source="energy_model", **kwargs)
