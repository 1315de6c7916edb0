"""LAMMPS SNAP potential files: ``.snapparam`` (descriptor settings) and ``.snapcoeff``
(per-element radius, weight and linear coefficients).

Plain file formats below the descriptor layer:
:meth:`snapqeq.descriptors.bispectrum.Bispectrum.from_snapparam` builds a descriptor from them and
:class:`snapqeq.calculators.snap.SNAPCalculator` evaluates the potential. Lengths in Angstrom,
coefficients in eV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SNA_DEFAULTS", "SNAPCoefficients", "read_snapcoeff", "read_snapparam"]

#: LAMMPS' defaults of the optional SNAP / ``compute sna/atom`` keywords (bnormflag as in
#: ``compute sna/atom``): the one place of these numbers in snapqeq (snapqeq.Bispectrum's
#: keyword defaults, ``.snapparam`` parsing); model files always carry every value.
SNA_DEFAULTS: dict = {"rfac0": 0.99363, "rmin0": 0.0, "switchflag": True, "bzeroflag": True,
                      "quadraticflag": False, "chemflag": False, "bnormflag": False,
                      "wselfallflag": False, "switchinnerflag": False}

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
    params: dict = dict(SNA_DEFAULTS)
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
