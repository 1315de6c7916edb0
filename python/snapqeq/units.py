"""Physical constants and units of snapqeq: one CODATA edition (2018) for the whole project.

snapqeq works in eV, Angstrom and e. The C++ kernel (``kernel/electrostatics.h``) defines
the same values; ``tests/test_units.py`` checks them against this module through the Cython
binding (:data:`snapqeq._electrostatics.COULOMB` etc.).

- :data:`HARTREE`: 1 Hartree in eV (CODATA 2018).
- :data:`BOHR`: 1 bohr in Angstrom (CODATA 2018).
- :data:`COULOMB`: the Coulomb constant k_e = e^2 / (4 pi eps0) in eV Angstrom / e^2, from
  the CODATA 2018 e = 1.602176634e-19 C (exact) and eps0 = 8.8541878128e-12 F/m; equal to
  HARTREE * BOHR to 2e-12 relative (E_h = k_e / a0; the difference is the rounding of
  the published values).
"""

from __future__ import annotations

__all__ = ["BOHR", "COULOMB", "HARTREE"]

HARTREE = 27.211386245988
"""1 Hartree in eV (CODATA 2018)."""

BOHR = 0.529177210903
"""1 bohr in Angstrom (CODATA 2018)."""

COULOMB = 14.399645478425672
"""Coulomb constant e^2 / (4 pi eps0) in eV Angstrom / e^2 (CODATA 2018)."""
