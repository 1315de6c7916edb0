"""snapqeq: SNAP bispectrum descriptors, charge-equilibration neural-network potentials
(CENT, 4G-style) and OLCAO potential-coefficient prediction.

The package is layered (each subpackage imports only from those below it):

- ``cli``, ``datasets``: the ``snapqeq`` command line; example data generation;
- ``calculators``, ``lammps``: the ASE calculators; the LAMMPS pair style plugin;
- ``training``: samples, training loop, TorchScript export and loading of model files;
- ``models``: CENT/4G networks, the OLCAO head, committees, the extrapolation guard;
- ``descriptors``, ``electrostatics``: bispectrum; Gaussian-charge Ewald/PME and QEq;
- ``io``, ``analysis``: file formats; metrics and plots;
- ``units``, ``neighbors`` and the C++ kernel bindings ``_sna``, ``_electrostatics``.

The names below are importable from ``snapqeq`` itself; they are loaded lazily so that,
e.g., ``import snapqeq.electrostatics.qeq`` does not load the bispectrum extension.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Bispectrum": "snapqeq.descriptors.bispectrum",
    "DataKeys": "snapqeq.io.structures",
    "SNAPCalculator": "snapqeq.calculators.snap",
    "SnapQEqCalculator": "snapqeq.calculators.cent",
    "TrainConfig": "snapqeq.training.trainer",
    "load_model": "snapqeq.io.model_file",
    "read_structures": "snapqeq.io.structures",
    "train": "snapqeq.training.trainer",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'snapqeq' has no attribute {name!r}")
