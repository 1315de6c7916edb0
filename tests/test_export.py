"""The TorchScript model file: contents, fresh-process loading, validation errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import rewrite_model_metadata

from snapqeq.io.archive import METADATA_FILE
from snapqeq.io.model_file import FORMAT_VERSION, load_model
from snapqeq.models.cent import CENT
from snapqeq.training.export import export_model

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


# ------------------------------------------------------------------ the metadata schema
PAIR_STYLE = Path(__file__).resolve().parents[1] / "pair_style" / "pair_snapqeq.cpp"


def test_writer_emits_and_validates_every_key_of_the_schema(tmp_path):
    """The schema lists every key as required; the writer emits them all (the descriptor
    with every bispectrum parameter, though DESCRIPTOR gives four) and the record is valid."""
    from snapqeq.descriptors.bispectrum import DICT_KEYS
    from snapqeq.io.model_file import REQUIRED, SCHEMA, validate_metadata

    assert set(SCHEMA["required"]) == set(SCHEMA["properties"])
    assert set(SCHEMA["$defs"]["descriptor"]["required"]) == set(DICT_KEYS)
    for short in (False, True):
        path = export_model(small_model(short), ["Na", "Cl"], DESCRIPTOR, tmp_path / f"{short}.pt")
        meta = load_model(path).metadata
        assert list(meta) == list(REQUIRED)
        assert set(meta["descriptor"]) == set(DICT_KEYS)
        assert meta["descriptor"]["rfac0"] == 0.99363  # snapqeq.io.snap_files.SNA_DEFAULTS
        validate_metadata(meta)
    with pytest.raises(ValueError, match=r"invalid model metadata at descriptor/twojmax"):
        validate_metadata(dict(meta, descriptor=dict(meta["descriptor"], twojmax="six")))


def test_plugin_requires_the_keys_of_the_schema():
    """pair_style snapqeq's list of required keys is the schema's (one definition)."""
    from snapqeq.io.model_file import REQUIRED

    source = PAIR_STYLE.read_text()
    block = re.search(r"kRequiredKeys = \{(.*?)\};", source, flags=re.S).group(1)
    assert re.findall(r'"(\w+)"', block) == list(REQUIRED)
    assert "0.99363" not in source  # no descriptor defaults in C++


@pytest.mark.parametrize("change, key", [
    (lambda m: m.pop("committee"), "committee"),
    (lambda m: m.pop("guard"), "guard"),
    (lambda m: m.pop("min_distances"), "min_distances"),
    (lambda m: m["descriptor"].pop("rfac0"), "rfac0"),
    (lambda m: m["units"].pop("charge"), "charge"),
])
def test_loader_refuses_a_file_with_a_key_removed(tmp_path, change, key):
    path = export_model(small_model(), ["Na", "Cl"], DESCRIPTOR, tmp_path / "m.pt")
    broken = rewrite_model_metadata(path, tmp_path / "broken.pt", change)
    with pytest.raises(ValueError, match=rf"broken.pt: .*'{key}'"):
        load_model(broken)


def test_writer_validates_before_writing(tmp_path, monkeypatch):
    """What the writer would write is validated first: a record the schema refuses (here a
    build_metadata that forgets a key) never reaches a file."""
    import snapqeq.training.export as export

    real = export.build_metadata

    def forgetful(*args, **kwargs):
        meta = real(*args, **kwargs)
        del meta["guard"]
        return meta

    monkeypatch.setattr(export, "build_metadata", forgetful)
    with pytest.raises(ValueError,
                       match=r"metadata to be written: model metadata lacks \['guard'\]"):
        export_model(small_model(), ["Na", "Cl"], DESCRIPTOR, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_schema_is_package_data():
    """The schema is declared as package data (a wheel carries it next to model_file.py)."""
    root = Path(__file__).resolve().parents[1]
    assert "model_file.schema.json" in (root / "pyproject.toml").read_text()
    assert (root / "python" / "snapqeq" / "io" / "model_file.schema.json").is_file()


def test_training_envelope_is_recorded(tmp_path):
    """export_model(..., training_samples=...) records each element's bispectrum range and
    the total-charge range of the samples, plus the guard thresholds."""
    import numpy as np
    from ase.build import bulk

    from snapqeq.descriptors.bispectrum import Bispectrum
    from snapqeq.models.guard import GUARD_DEFAULTS
    from snapqeq.training.data import make_sample

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
