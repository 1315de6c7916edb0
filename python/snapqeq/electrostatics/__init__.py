"""Gaussian-charge electrostatics (direct sums, Ewald, PME) and charge equilibration."""
