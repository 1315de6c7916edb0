"""LAMMPS SNAP potential files and an ASE calculator that evaluates them.

The calculator is the compatibility proof of the bispectrum kernel: with the potential
files shipped with LAMMPS it reproduces ``pair_style snap`` (energy, per-atom energies,
forces, stress).  Units: eV, Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from snapqeq._sna import accumulate_pair_forces
from snapqeq.bispectrum import VOIGT, Bispectrum

_INT_KEYS = ("twojmax", "switchflag", "bzeroflag", "quadraticflag", "chemflag", "bnormflag",
             "wselfallflag", "switchinnerflag", "chunksize", "parallelthresh")
_FLOAT_KEYS = ("rcutfac", "rfac0", "rmin0")
_LIST_KEYS = ("sinner", "dinner")
_FLAGS = ("switchflag", "bzeroflag", "quadraticflag", "chemflag", "bnormflag", "wselfallflag",
          "switchinnerflag")


@dataclass(frozen=True)
class SNAPCoefficients:
    """Contents of a ``.snapcoeff`` file: per element radius, weight and coefficients."""

    elements: tuple[str, ...]
    radii: tuple[float, ...]
    weights: tuple[float, ...]
    coefficients: np.ndarray  # (n_elements, ncoeff); column 0 is the constant beta0


def _lines(path) -> list[tuple[int, list[str]]]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"SNAP file not found: {p}")
    out = []
    for number, line in enumerate(p.read_text().splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if words:
            out.append((number, words))
    return out


def read_snapparam(path) -> dict:
    """Parse a ``.snapparam`` file into a dict (LAMMPS defaults for missing flags)."""
    params: dict = {"rfac0": 0.99363, "rmin0": 0.0, "switchflag": True, "bzeroflag": True,
                    "quadraticflag": False, "chemflag": False, "bnormflag": False,
                    "wselfallflag": False, "switchinnerflag": False}
    for number, words in _lines(path):
        key = words[0]
        try:
            if key in _INT_KEYS:
                params[key] = int(words[1])
            elif key in _FLOAT_KEYS:
                params[key] = float(words[1])
            elif key in _LIST_KEYS:
                params[key] = [float(w) for w in words[1:]]
            else:
                raise ValueError(f"{path}:{number}: unknown keyword {key!r}")
        except IndexError:
            raise ValueError(f"{path}:{number}: keyword {key!r} has no value") from None
    for key in ("rcutfac", "twojmax"):
        if key not in params:
            raise ValueError(f"{path}: required keyword {key!r} is missing")
    for key in _FLAGS:
        params[key] = bool(params[key])
    if params["switchinnerflag"] and not ("sinner" in params and "dinner" in params):
        raise ValueError(f"{path}: switchinnerflag 1 needs 'sinner' and 'dinner' lists")
    return params


def read_snapcoeff(path) -> SNAPCoefficients:
    """Parse a ``.snapcoeff`` file."""
    lines = _lines(path)
    if not lines:
        raise ValueError(f"{path}: empty coefficient file")
    try:
        nelem, ncoeff = int(lines[0][1][0]), int(lines[0][1][1])
    except (IndexError, ValueError):
        raise ValueError(f"{path}:{lines[0][0]}: expected 'nelements ncoeff'") from None
    elements, radii, weights, coeffs = [], [], [], []
    k = 1
    for _ in range(nelem):
        if k >= len(lines) or len(lines[k][1]) < 3:
            raise ValueError(f"{path}: expected 'element radius weight' for element "
                             f"{len(elements) + 1} of {nelem}")
        number, words = lines[k]
        elements.append(words[0])
        radii.append(float(words[1]))
        weights.append(float(words[2]))
        block = lines[k + 1:k + 1 + ncoeff]
        if len(block) != ncoeff:
            raise ValueError(f"{path}: element {words[0]} has {len(block)} of {ncoeff} "
                             "coefficients")
        coeffs.append([float(w[0]) for _, w in block])
        k += 1 + ncoeff
    return SNAPCoefficients(tuple(elements), tuple(radii), tuple(weights), np.array(coeffs))


class SNAPCalculator(Calculator):
    """ASE calculator for LAMMPS SNAP potentials (linear and quadratic).

    Parameters
    ----------
    coeff_file, param_file : path
        The ``.snapcoeff`` and ``.snapparam`` files of ``pair_style snap``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, coeff_file, param_file, **kwargs):
        super().__init__(**kwargs)
        self.params = read_snapparam(param_file)
        self.coeff = read_snapcoeff(coeff_file)
        self.descriptor = Bispectrum.from_snap(self.params, self.coeff)
        k = self.descriptor.n_linear
        nq = k * (k + 1) // 2 if self.params["quadraticflag"] else 0
        if self.coeff.coefficients.shape[1] != 1 + k + nq:
            raise ValueError(
                f"{coeff_file}: {self.coeff.coefficients.shape[1]} coefficients per element, "
                f"but the parameters (twojmax={self.params['twojmax']}, quadraticflag="
                f"{int(self.params['quadraticflag'])}) need {1 + k + nq}")
        c = self.coeff.coefficients
        self._beta0 = np.ascontiguousarray(c[:, 0])
        self._beta = np.ascontiguousarray(c[:, 1:1 + k])
        self._quad = None
        if nq:
            a, b = np.triu_indices(k)
            q = np.zeros((len(c), k, k))
            q[:, a, b] = c[:, 1 + k:]
            q[:, b, a] = c[:, 1 + k:]
            self._quad = q

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        d = self.descriptor
        species = d.species(atoms)
        pairs, args = d._pairs(atoms)
        energies, dedr = d._kernel.snap(**args, species=species.astype(np.int32),
                                        beta0=self._beta0, beta=self._beta,
                                        quadratic=self._quad)
        forces, dedstrain = accumulate_pair_forces(dedr, pairs.i, pairs.j, pairs.rij,
                                                   len(atoms))
        self.results["energies"] = energies
        self.results["energy"] = self.results["free_energy"] = float(energies.sum())
        self.results["forces"] = forces
        if atoms.cell.rank == 3 and any(atoms.pbc):
            sym = 0.5 * (dedstrain + dedstrain.T) / atoms.get_volume()
            self.results["stress"] = np.array([sym[a, b] for a, b in VOIGT])
