"""snapqeq: SNAP bispectrum descriptors, charge-equilibration neural-network potentials
(CENT) and OLCAO potential-coefficient prediction.

Submodules are imported lazily so that, e.g., ``snapqeq.qeq`` does not load the compiled
bispectrum extension.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Bispectrum": "snapqeq.bispectrum",
    "SnapQEqCalculator": "snapqeq.calculator",
    "load_model": "snapqeq.export",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'snapqeq' has no attribute {name!r}")
