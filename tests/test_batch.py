"""Batched training path (snapqeq.training.batch) against the one-structure path and finite
differences: energies, forces, charges, losses and their parameter gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from snapqeq import Bispectrum
from snapqeq.datasets.clusters import generate_clusters
from snapqeq.models.cent import CENT
from snapqeq.training.batch import batch_loss, collate, predict_batch, structure_loss
from snapqeq.training.data import make_sample
from snapqeq.training.potential import predict

DESCRIPTOR = {"twojmax": 4, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
              "weights": {"Na": 1.0, "Cl": 0.5}}
WEIGHTS = {"energy": 1.0, "forces": 0.3, "charges": 2.0}


def _model(short):
    torch.manual_seed(0)
    bs = Bispectrum(**DESCRIPTOR)
    model = CENT(2, bs.n_components, [4, 4], [0.53, 1.06], [5.4, 2.7], [-3.0, -2.0],
                 learn_hardness=True, short_hidden=short)
    with torch.no_grad():  # visible chi variation, so that the charges matter
        for p in model.chi_net.parameters():
            p.mul_(3.0)
    return model


def _samples(with_periodic: bool = False):
    """Mixed sizes (padding), neutral and charged, with reference values."""
    bs = Bispectrum(**DESCRIPTOR)
    rng = np.random.default_rng(3)
    frames = (generate_clusters(8, 2, seed=2, tag=0) + generate_clusters(12, 2, seed=2, tag=1)
              + generate_clusters(16, 1, seed=2, tag=2))
    charges = [0.0, 0.0, 1.0, 1.0, -1.0]
    if with_periodic:
        cell = Atoms("NaClNaCl", scaled_positions=[[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.1],
                                                   [0.5, 0.5, 0.1]],
                     cell=[5.6, 5.6, 4.0], pbc=True)
        frames.insert(2, cell)
        charges.insert(2, 0.0)
    samples = []
    for atoms, q in zip(frames, charges, strict=True):
        atoms.info.update(charge=q, energy=float(rng.normal(-3.0 * len(atoms), 1.0)))
        atoms.arrays["forces"] = rng.normal(0.0, 0.5, (len(atoms), 3))
        ref = rng.normal(0.0, 0.3, len(atoms))
        atoms.arrays["ref_charges"] = ref - ref.mean() + q / len(atoms)
        samples.append(make_sample(atoms, bs))
    return samples


@pytest.mark.parametrize("short", [None, [5]])
def test_batch_equals_single_structure_path(short):
    model = _model(short)
    samples = _samples()
    out = predict_batch(model, collate(samples), forces=True)
    ref = [predict(model, s) for s in samples]
    energy = torch.stack([r["energy"] for r in ref]).detach()
    assert torch.allclose(out["energy"].detach(), energy, rtol=1e-12, atol=1e-10)
    for key in ("forces", "charges", "chi"):
        expected = torch.cat([r[key] for r in ref]).detach()
        assert torch.allclose(out[key].detach(), expected, rtol=1e-10, atol=1e-11), key
    # the charged clusters carry their total charge, the padding none
    sums = torch.zeros(len(samples), dtype=torch.float64).index_add(
        0, collate(samples).structure, out["charges"].detach())
    assert torch.allclose(sums, torch.tensor([s.total_charge for s in samples],
                                             dtype=torch.float64), atol=1e-12)


def test_batch_forces_are_minus_gradient():
    model = _model([5])
    samples = _samples()
    batch = collate(samples)
    forces = predict_batch(model, batch)["forces"].detach()
    bs = Bispectrum(**DESCRIPTOR)
    h = 1e-5
    for atom, axis in ((0, 0), (9, 2), (20, 1), (len(forces) - 1, 0)):
        k = int(batch.structure[atom])
        local = atom - int(torch.nonzero(batch.structure == k)[0])
        base = samples[k]
        energies = []
        for sign in (1, -1):
            pos = base.positions.numpy().copy()
            pos[local, axis] += sign * h
            atoms = Atoms(numbers=[11 if e == 0 else 17 for e in base.species.tolist()],
                          positions=pos)
            atoms.info["charge"] = base.total_charge
            moved = collate([make_sample(atoms, bs)])
            energies.append(float(predict_batch(model, moved, forces=False)["energy"][0].detach()))
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert abs(numeric - float(forces[atom, axis])) < 1e-7 * max(1.0, abs(numeric))


@pytest.mark.parametrize("short", [None, [5]])
def test_batch_loss_and_parameter_gradients_match(short):
    model = _model(short)
    samples = _samples(with_periodic=True)  # the periodic cell goes the one-by-one way
    params = [p for name, p in model.named_parameters()
              if p.requires_grad and (short or not name.startswith("short_net"))]
    loss = batch_loss(model, samples, WEIGHTS, create_graph=True)
    grads = torch.autograd.grad(loss, params)
    ref = sum(structure_loss(model, s, WEIGHTS, create_graph=True) for s in samples)
    ref_grads = torch.autograd.grad(ref, params)
    assert abs(float((loss - ref).detach())) <= 1e-11 * abs(float(ref.detach()))
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-10 * float(r.abs().max()) + 1e-14)


def test_collate_refuses_periodic_cells():
    cell = _samples(with_periodic=True)[2]
    with pytest.raises(ValueError, match="clusters"):
        collate([cell])
