"""The TorchScript model file: contents, fresh-process loading, validation errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import rewrite_model_metadata

from snapqeq.export import FORMAT_VERSION, METADATA_FILE, export_model, load_model
from snapqeq.model import CENT

DESCRIPTOR = {"twojmax": 2, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
              "weights": {"Na": 1.0, "Cl": 0.5}}


def small_model(short: bool = False) -> CENT:
    torch.manual_seed(0)
    return CENT(2, 5, [3, 3], [0.53, 1.06], [5.4, 2.7], [-1.0, -2.0],
                short_hidden=[4] if short else None)


@pytest.mark.parametrize("short", [False, True])
def test_roundtrip_matches_python_model(tmp_path, short):
    model = small_model(short)
    path = export_model(model, ["Na", "Cl"], DESCRIPTOR, tmp_path / "m.pt")
    loaded = load_model(path)
    b = torch.randn(6, 5, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1, 1, 0])
    q = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(loaded.module(b, species), model.electronegativity(b, species))
    assert torch.allclose(loaded.module.short_energy(b, q, species),
                          model.short_energy(b, q, species))
    assert loaded.elements == ["Na", "Cl"]
    assert loaded.metadata["descriptor"]["twojmax"] == 2
    assert loaded.metadata["has_short_range"] is short
    assert torch.allclose(loaded.module.hardness(), torch.tensor([5.4, 2.7], dtype=torch.float64))


def test_loads_in_fresh_process_without_snapqeq(tmp_path):
    path = export_model(small_model(), ["Na", "Cl"], DESCRIPTOR, tmp_path / "m.pt")
    code = (
        "import sys, json, torch\n"
        "sys.modules['snapqeq'] = None  # make any import of snapqeq fail\n"
        f"extra = {{'{METADATA_FILE}': ''}}\n"
        f"m = torch.jit.load({str(path)!r}, _extra_files=extra)\n"
        "meta = json.loads(extra['snapqeq.json'])\n"
        "chi = m(torch.zeros(3, 5, dtype=torch.float64), torch.tensor([0, 1, 1]))\n"
        "print(json.dumps({'elements': meta['elements'], 'chi': chi.tolist()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    result = json.loads(out.stdout)
    assert result["elements"] == ["Na", "Cl"]
    expected = small_model().electronegativity(torch.zeros(3, 5, dtype=torch.float64),
                                               torch.tensor([0, 1, 1]))
    assert result["chi"] == pytest.approx(expected.tolist(), rel=1e-12)


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "m.pt"
    path.write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(small_model(), ["Na", "Cl"], DESCRIPTOR, path)
    assert path.read_text() == "user data"


def test_wrong_version_and_missing_fields_fail_clearly(tmp_path):
    path = export_model(small_model(), ["Na", "Cl"], DESCRIPTOR, tmp_path / "m.pt")
    old = tmp_path / "old.pt"
    rewrite_model_metadata(path, old, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format version"):
        load_model(old)
    broken = tmp_path / "broken.pt"
    rewrite_model_metadata(path, broken, lambda m: m.pop("widths"))
    with pytest.raises(ValueError, match="widths"):
        load_model(broken)
    with pytest.raises(ValueError, match="not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(ValueError, match="not a TorchScript"):
        load_model(junk)


def test_training_envelope_is_recorded(tmp_path):
    """export_model(..., training_samples=...) records each element's bispectrum range and
    the total-charge range of the samples, plus the guard thresholds."""
    import numpy as np
    from ase.build import bulk

    from snapqeq.bispectrum import Bispectrum
    from snapqeq.data import make_sample
    from snapqeq.guard import GUARD_DEFAULTS

    bs = Bispectrum(**DESCRIPTOR)
    structures = []
    for seed, charge in ((0, 0.0), (1, 2.0)):
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        atoms.rattle(0.1, seed=seed)
        atoms.info["charge"] = charge
        atoms.info["energy"] = -3.0 * len(atoms)  # complete reference data, eV
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
        structures.append(atoms)
    samples = [make_sample(a, bs) for a in structures]
    path = export_model(small_model(), ["Na", "Cl"], DESCRIPTOR, tmp_path / "m.pt",
                        training_samples=samples)
    meta = load_model(path).metadata
    assert meta["total_charge_range"] == [0.0, 2.0]
    assert meta["guard"] == GUARD_DEFAULTS
    for e, el in enumerate(["Na", "Cl"]):
        b = np.concatenate([bs.compute(a)[bs.species(a) == e] for a in structures])
        np.testing.assert_allclose(meta["descriptor_range"][el]["min"], b.min(0))
        np.testing.assert_allclose(meta["descriptor_range"][el]["max"], b.max(0))
    # without samples the keys are present and empty (the guard then says what it lacks)
    bare = load_model(export_model(small_model(), ["Na", "Cl"], DESCRIPTOR,
                                   tmp_path / "bare.pt")).metadata
    assert bare["descriptor_range"] is None and bare["total_charge_range"] is None


def test_training_checkpoint_is_named_as_such(tmp_path):
    torch.save({"model": small_model().state_dict()}, tmp_path / "checkpoint_best.pt")
    with pytest.raises(ValueError, match=r"is a training checkpoint, not a model file: run "
                       r"`snapqeq export"):
        load_model(tmp_path / "checkpoint_best.pt")
