"""An ASE calculator for LAMMPS SNAP potential files (read by :mod:`snapqeq.io.snap_files`).

The calculator is the compatibility proof of the bispectrum kernel: with the potential
files shipped with LAMMPS it reproduces ``pair_style snap`` (energy, per-atom energies,
forces, stress).  Units: eV, Angstrom.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from snapqeq._sna import accumulate_pair_forces
from snapqeq.descriptors.bispectrum import VOIGT, Bispectrum
from snapqeq.io.snap_files import SNAPCoefficients, read_snapcoeff, read_snapparam

__all__ = ["SNAPCalculator", "SNAPCoefficients", "read_snapcoeff", "read_snapparam"]


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
        pairs, args = d.pair_arguments(atoms)
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
