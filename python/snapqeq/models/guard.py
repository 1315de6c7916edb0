"""The geometry and extrapolation guard of a model file, shared by the ASE calculator and
``pair_style snapqeq`` (pair_style/pair_snapqeq.cpp implements the same checks with the
same thresholds and message text).

A model file written by ``snapqeq train`` records the envelope of its training data
(:func:`training_envelope`):

- ``min_distances``: shortest distance (Angstrom) per element pair ``"A-B"``;
- ``descriptor_range``: per element, the smallest and largest value of every linear
  bispectrum component over that element's training atoms;
- ``total_charge_range``: smallest and largest total charge (e) of the training structures;

and the thresholds ``guard`` (:data:`GUARD_DEFAULTS`):

- a pair closer than ``min_distance_factor`` x the shortest training distance of its
  element pair: the networks were never fitted there (the NaCl models attract below
  ~1.5 Angstrom, so hot MD could collapse atoms silently);
- a bispectrum component outside ``[min - m w, max + m w]`` of the atom's element
  (``m = descriptor_margin``, ``w = max - min``): the networks extrapolate;
- a total charge outside ``[min - c, max + c]`` (``c = charge_margin``, e).

Modes (calculator parameter ``guard``, pair style keyword ``guard``):

- ``"stop"`` (default): too-close pairs and an untrained total charge stop the calculation
  (ValueError / LAMMPS error); descriptor extrapolation warns (energy-compression curves
  leave the training range on purpose);
- ``"strict"``: every check stops;
- ``"warn"``: every check warns (at most :data:`MAX_WARNINGS` per check).

Model files written before these keys existed load; the guard then checks what the file
has (usually the distances only) and says so once (:attr:`Guard.limitations`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["GUARD_DEFAULTS", "MAX_WARNINGS", "MODES", "Guard", "training_envelope"]

#: thresholds written into every model file (key ``guard``); also used for older files
GUARD_DEFAULTS: dict[str, float] = {"min_distance_factor": 0.5, "descriptor_margin": 1.0,
                                    "charge_margin": 0.5}
MODES = ("stop", "strict", "warn")
#: warnings per check and calculator (LAMMPS: per check and run) before they are muted
MAX_WARNINGS = 5
# the end of every message that stops a calculation (identical in the plugin)
STOP_HINT = ("; check the structure, or set guard to warn to go on with a warning, or "
             "retrain with such data")


def training_envelope(samples: list, n_linear: int, elements: list[str]) -> dict[str, Any]:
    """``descriptor_range`` and ``total_charge_range`` of training samples.

    ``samples``: :class:`snapqeq.training.data.Sample` objects (``b``: (N, K) bispectrum with the
    ``n_linear`` linear components first, ``species``, ``total_charge`` in e).  Elements
    without atoms in the samples get no range (the guard then skips them).
    """
    lo = np.full((len(elements), n_linear), np.inf)
    hi = np.full((len(elements), n_linear), -np.inf)
    charges = []
    for s in samples:
        b = np.asarray(s.b.detach().numpy() if hasattr(s.b, "detach") else s.b)[:, :n_linear]
        sp = np.asarray(s.species)
        for e in np.unique(sp):
            lo[e] = np.minimum(lo[e], b[sp == e].min(0))
            hi[e] = np.maximum(hi[e], b[sp == e].max(0))
        charges.append(float(s.total_charge))
    ranges = {el: {"min": lo[e].tolist(), "max": hi[e].tolist()}
              for e, el in enumerate(elements) if np.all(np.isfinite(lo[e]))}
    return {"descriptor_range": ranges,
            "total_charge_range": [min(charges), max(charges)] if charges else None}


def distance_message(i: int, a: str, j: int, b: str, r: float, floor: float,
                     trained: float) -> str:
    """The text of a too-close pair (the plugin prints the same with atom IDs)."""
    return (f"snapqeq guard: atoms {i} ({a}) and {j} ({b}) are {r:.3f} Angstrom apart, below "
            f"{floor:.3f} = min_distance_factor x {trained:.3f}, the shortest {a}-{b} distance "
            f"in the model's training data: the model is not valid there (collapsed "
            f"structure?)")


def descriptor_message(i: int, el: str, k: int, value: float, lo: float, hi: float,
                       margin: float) -> str:
    """The text of a bispectrum component outside the (unpadded) training range lo..hi."""
    return (f"snapqeq guard: atom {i} ({el}) has bispectrum component {k} = {value:.6g}, "
            f"outside its training range [{lo:.6g}, {hi:.6g}] by more than descriptor_margin "
            f"{margin:g} x the range: the model extrapolates there")


def charge_message(total: float, lo: float, hi: float, margin: float) -> str:
    """The text of a total charge outside the trained range."""
    return (f"snapqeq guard: total charge {total:g} e lies outside the trained range "
            f"[{lo:g}, {hi:g}] e by more than charge_margin {margin:g} e: the model "
            f"extrapolates there")


class Guard:
    """The checks of one model file (metadata dict) for one front end.

    Parameters
    ----------
    metadata : dict
        Model metadata (:func:`snapqeq.io.model_file.load_model`).
    mode : {"stop", "strict", "warn"}
        What a failed check does (module docstring).
    min_distance_factor : float, optional
        Overrides the model file's factor; 0 disables the distance check.
    """

    def __init__(self, metadata: dict, mode: str = "stop",
                 min_distance_factor: float | None = None):
        if mode not in MODES:
            raise ValueError(f"guard must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.elements = list(metadata["elements"])
        thresholds = dict(GUARD_DEFAULTS, **(metadata.get("guard") or {}))
        if min_distance_factor is not None:
            thresholds["min_distance_factor"] = float(min_distance_factor)
        self.thresholds = thresholds
        n = len(self.elements)
        self.trained_distance = np.zeros((n, n))
        for key, r in (metadata.get("min_distances") or {}).items():
            a, b = (self.elements.index(e) for e in key.split("-"))
            self.trained_distance[a, b] = self.trained_distance[b, a] = r
        self.floor = thresholds["min_distance_factor"] * self.trained_distance
        # per element: training minimum and maximum of each component
        self.ranges: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for el, rng in (metadata.get("descriptor_range") or {}).items():
            self.ranges[self.elements.index(el)] = (np.asarray(rng["min"], float),
                                                   np.asarray(rng["max"], float))
        self.charge_range = metadata.get("total_charge_range")
        missing = [name for name, have in (
            ("min_distances", metadata.get("min_distances")),
            ("descriptor_range", metadata.get("descriptor_range")),
            ("total_charge_range", self.charge_range)) if not have]
        #: what the model file lacks for a full guard, as one sentence ("" if nothing)
        self.limitations = (
            f"the model file has no {', '.join(missing)} (written by an older snapqeq or "
            f"without training data): the guard skips those checks; re-export it with "
            f"snapqeq train" if missing else "")
        self._warned: dict[str, int] = {}

    @property
    def checks_distances(self) -> bool:
        return bool(np.any(self.floor > 0))

    def _fail(self, kind: str, message: str, stops: bool) -> None:
        if stops:
            raise ValueError(message + STOP_HINT)
        count = self._warned.get(kind, 0) + 1
        self._warned[kind] = count
        if count <= MAX_WARNINGS:
            more = " (further warnings of this kind muted)" if count == MAX_WARNINGS else ""
            warnings.warn(message + more, UserWarning, stacklevel=4)

    def check_distances(self, species: np.ndarray, i: np.ndarray, j: np.ndarray,
                        rij: np.ndarray) -> None:
        """Pairs (i, j) with separation vectors rij (P, 3), Angstrom, against the floor of
        their elements."""
        if not self.checks_distances or len(rij) == 0:
            return
        r = np.sqrt(np.einsum("pk,pk->p", rij, rij))
        floor = self.floor[species[i], species[j]]
        bad = r < floor
        if np.any(bad):
            k = np.flatnonzero(bad)[np.argmin((r / np.where(floor > 0, floor, 1.0))[bad])]
            a, b = int(species[i[k]]), int(species[j[k]])
            self._fail("distance", distance_message(
                int(i[k]), self.elements[a], int(j[k]), self.elements[b], float(r[k]),
                float(floor[k]), float(self.trained_distance[a, b])), self.mode != "warn")

    def check_descriptors(self, species: np.ndarray, b_linear: np.ndarray) -> None:
        """Linear bispectrum components (N, n_linear) against the element's padded range."""
        margin = self.thresholds["descriptor_margin"]
        for e, (lo, hi) in self.ranges.items():
            rows = np.flatnonzero(species == e)
            if rows.size == 0 or b_linear.shape[1] != lo.size:
                continue
            b = b_linear[rows]
            pad = margin * (hi - lo)
            excess = np.maximum(lo - pad - b, b - hi - pad)
            if np.any(excess > 0):
                a, k = np.unravel_index(np.argmax(excess), excess.shape)
                self._fail("descriptor", descriptor_message(
                    int(rows[a]), self.elements[e], int(k), float(b[a, k]), float(lo[k]),
                    float(hi[k]), margin), self.mode == "strict")

    def check_total_charge(self, total: float) -> None:
        """The total charge (e) against the trained range plus charge_margin."""
        if not self.charge_range:
            return
        lo, hi = self.charge_range
        m = self.thresholds["charge_margin"]
        if total < lo - m or total > hi + m:
            self._fail("charge", charge_message(total, lo, hi, m), self.mode != "warn")
