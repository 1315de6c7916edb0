"""One set of physical constants (snapqeq.units, CODATA 2018) in Python and in C++."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snapqeq import _electrostatics, units
from snapqeq.electrostatics.ewald import Electrostatics

# CODATA 2018: the elementary charge (exact since 2019) and the vacuum permittivity
ELEMENTARY_CHARGE = 1.602176634e-19  # C
VACUUM_PERMITTIVITY = 8.8541878128e-12  # F/m


def test_constants_are_codata_2018():
    assert units.HARTREE == 27.211386245988
    assert units.BOHR == 0.529177210903
    # k_e = e / (4 pi eps0) in V m, times 1e10 for eV Angstrom / e^2
    coulomb = ELEMENTARY_CHARGE / (4.0 * math.pi * VACUUM_PERMITTIVITY) * 1e10
    assert units.COULOMB == pytest.approx(coulomb, rel=1e-15)
    # the Hartree is k_e / a0; the published values agree to their rounding
    assert units.HARTREE * units.BOHR == pytest.approx(units.COULOMB, rel=3e-12)


def test_kernel_constants_equal_the_units_module():
    """kernel/electrostatics.h defines kCoulomb, kHartree, kBohr; the binding exposes them."""
    assert _electrostatics.COULOMB == units.COULOMB
    assert _electrostatics.HARTREE == units.HARTREE
    assert _electrostatics.BOHR == units.BOHR


@pytest.mark.parametrize("engine", ["kernel", "torch"])
def test_electrostatics_use_the_units_constant(engine):
    """Two narrow Gaussians far apart: E = k_e q1 q2 / r plus the self energies
    k_e q^2 / (sqrt(2 pi) alpha), with k_e = units.COULOMB, in the C++ kernel and in the
    torch electrostatics."""
    r, alpha = 50.0, 0.1
    pos = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
    q = np.array([1.0, -1.0])
    if engine == "kernel":
        energy = _electrostatics.GaussianElectrostatics(pos, None, np.full(2, alpha)).energy(q)
    else:
        energy = float(Electrostatics(pos, None, False, np.full(2, alpha)).energy(q))
    expected = units.COULOMB * (-1.0 / r + 2.0 / (math.sqrt(2.0 * math.pi) * alpha))
    assert energy == pytest.approx(expected, rel=1e-14)
