"""The GFN2-xTB relaxation step of the NaCl active-learning round
(examples/nacl_clusters/active_learning.py): labelled frames along the path of each
minimum, the end point a GFN2-xTB minimum, duplicates left out, results cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "nacl_clusters" / "active_learning.py"


def load_example():
    return load_script(SCRIPT, "nacl_active_learning")


def rhombus(charge: int, stretch: float) -> Atoms:
    """An Na2Cl2 square of edge 2.6 Å stretched along x by ``stretch`` (a non-minimum)."""
    a = 2.6
    atoms = Atoms("NaClNaCl", [[0, 0, 0], [a * stretch, 0, 0], [a * stretch, a, 0], [0, a, 0]])
    atoms.info.update(cluster="Na2Cl2" + "+" * charge, charge=charge, source="minimum")
    return atoms


def test_relaxation_frames_are_labelled_and_end_at_a_gfn2_minimum(tmp_path):
    al = load_example()
    settings = al.Round(relax_frames=3, relax_fmax=0.05)
    starts = [rhombus(0, 1.3), rhombus(0, 1.3), rhombus(1, 1.3)]
    frames = al.relax_with_xtb(starts, settings, cache=tmp_path / "cache")

    # the two identical starts give one set of frames; at most 3 per relaxation
    neutral = [f for f in frames if f.info["charge"] == 0]
    ionized = [f for f in frames if f.info["charge"] == 1]
    assert len(neutral) == 3 and len(ionized) == 3  # measured: 3 distinct frames each
    for group, name in ((neutral, "Na2Cl2"), (ionized, "Na2Cl2+")):
        assert group[-1].info["source"] == "GFN2-xTB relaxation end point"
        assert all(f.info["source"] == "GFN2-xTB relaxation" for f in group[:-1])
        assert all(f.info["cluster"] == name and f.info["split"] == "train" for f in group)
        assert group[-1].info["converged"]
        assert np.abs(group[-1].arrays["forces"]).max() < 0.05 * 1.0001
        energies = [f.info["energy"] for f in group]
        assert energies == sorted(energies, reverse=True)  # downhill along the path
        for f in group:
            assert f.arrays["forces"].shape == (4, 3)
            assert abs(f.arrays["ref_charges"].sum() - f.info["charge"]) < 1e-6

    # a known structure is not taken again, and a second run comes from the cache
    again = al.relax_with_xtb(starts[:1], settings, cache=tmp_path / "cache", known=neutral)
    assert again == []
    assert al.relax_with_xtb(starts, al.Round(relax_frames=0)) == []
