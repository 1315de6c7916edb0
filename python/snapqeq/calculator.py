"""ASE calculator for exported snapqeq models (CENT, optionally with a short-range network).

    atoms.calc = SnapQEqCalculator("model.pt")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_charges()

Per call: bispectrum (C++ kernel) -> chi from the TorchScript network -> global charge
equilibration (:func:`snapqeq.qeq.equilibrate`, dense or iterative by size, warm-started from
the previous charges) -> energy; forces and stress are the Hellmann-Feynman terms
-dE_es/dr|_q plus the descriptor term -sum_i beta_i . dB_i/dr (adjoint kernel) with
beta_i = q_i dchi_i/dB_i, and with a short-range network the adjoint solve of SPEC §5.
A model with an OLCAO head also gives per-site potential coefficients A_i (Hartree) with
their standard deviations, from this call's charges and site potentials; they are computed
only when asked for (``calc.get_property("potential_coefficients", atoms)``).
A committee model file (``snapqeq train`` with ``committee: n``) has every member evaluated
completely (its own chi and charge equilibration); energy, per-atom energies, forces,
stress, charges and chi are the members' means, and ``results`` add ``energy_std`` (eV),
``forces_std`` (per atom, eV/Angstrom), ``energies_std`` (per atom, eV) and the members'
``committee_energy`` / ``committee_forces`` / ``committee_charges``
(:mod:`snapqeq.committee` defines them), with an optional threshold that warns or stops.
Units: eV, Angstrom, e.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from snapqeq._sna import accumulate_pair_forces
from snapqeq.bispectrum import Bispectrum
from snapqeq.committee import CommitteeCheck, committee_statistics
from snapqeq.ewald import Electrostatics
from snapqeq.export import LoadedModel, load_model
from snapqeq.guard import Guard
from snapqeq.qeq import (
    DENSE_MAX_ATOMS,
    KERNEL_MAX_PERIODIC,
    equilibrate,
    kernel_electrostatics,
    total_charge_of,
)
from snapqeq.site_features import FeatureRecipe, SiteFeaturizer


class SnapQEqCalculator(Calculator):
    """ASE calculator of a snapqeq model file.

    Parameters
    ----------
    model : str or LoadedModel
        Path of the exported TorchScript model (``snapqeq export`` / training output).
    total_charge : float, optional
        Total charge Q (e); default: ``atoms.info["charge"]``, else the sum of
        ``atoms.get_initial_charges()``, else 0.
    device : str
        Torch device of the networks (the descriptor and the solver run on the CPU).
    min_distance_factor : float, optional
        Refuse (ValueError) structures with two atoms closer than this fraction of the
        shortest distance of their element pair in the training data (stored in model
        files written by ``snapqeq train``): the networks are not valid there and MD would
        go on with meaningless forces.  Default: the model file's value (0.5); 0 disables
        the check (the electrostatics still refuse overlapping atoms, < 0.1 Angstrom).
    guard : {"stop", "strict", "warn"}
        What the geometry/extrapolation guard (:mod:`snapqeq.guard`, the same checks and
        messages as ``pair_style snapqeq ... guard``) does: ``"stop"`` raises ValueError
        for too-close pairs and a total charge outside the trained range and warns when a
        bispectrum component leaves the training range; ``"strict"`` raises for all
        three; ``"warn"`` only warns.  A model file without the training envelope (older
        versions) gets the checks it has and one warning saying so.
    committee_threshold : (float or None, float or None), optional
        For a committee model file (``snapqeq train`` with ``committee: n``): the largest
        energy std per atom (eV/atom) and per-atom force std (eV/Angstrom) accepted, None
        for either to skip it (:class:`snapqeq.committee.CommitteeCheck`).
    committee_action : {"warn", "stop"}
        What a spread above ``committee_threshold`` does: a warning, or ValueError naming
        the threshold and the value.
    **solver_options
        Passed to :func:`snapqeq.qeq.equilibrate` (``method``, ``tol``, ...).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "charges"]
    #: per-site results of a model with an OLCAO head: (N, D) Hartree, NaN beyond an
    #: element's exponent series (see :attr:`potential_exponents`)
    olcao_properties = ["potential_coefficients", "potential_coefficients_std"]
    #: results of a committee model file (besides the members' mean as energy, forces,
    #: stress, charges): energy std (eV), per-atom force std (eV/A) and energy std (eV)
    committee_properties = ["energy_std", "forces_std", "energies_std"]

    def __init__(self, model="model.pt", total_charge: float | None = None,
                 device: str = "cpu", min_distance_factor: float | None = None,
                 guard: str = "stop", committee_threshold=None,
                 committee_action: str = "warn", **solver_options):
        super().__init__()
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.device = torch.device(device)
        self.module = self.model.module.to(self.device)
        meta = self.model.metadata
        self.descriptor = Bispectrum.from_dict(meta["descriptor"])
        if list(self.descriptor.elements) != list(meta["elements"]):
            raise CalculatorSetupError("model descriptor and element list disagree")
        self.total_charge = total_charge
        self.solver_options = solver_options
        self.hardness = np.asarray(meta["hardness"], dtype=float)
        self.widths = np.asarray(meta["widths"], dtype=float)
        self.e0 = np.asarray(meta["e0"], dtype=float)
        self.has_short = bool(meta["has_short_range"])
        self.guard = Guard(meta, guard, min_distance_factor)
        if self.guard.limitations:
            warnings.warn(f"{self.model.path}: {self.guard.limitations}", UserWarning,
                          stacklevel=2)
        #: committee members in the file (1: a single model)
        self.n_members = self.model.committee
        self._member_params = [
            {key: np.asarray(m[key], dtype=float) for key in ("hardness", "widths", "e0")}
            for m in (meta["members"] if self.n_members > 1
                      else [{"hardness": meta["hardness"], "widths": meta["widths"],
                             "e0": meta["e0"]}])]
        self.committee_check = CommitteeCheck(committee_threshold, committee_action)
        if self.committee_check.active and self.n_members == 1:
            raise CalculatorSetupError(f"committee_threshold needs a committee model file; "
                                       f"{self.model.path} holds a single model")
        if self.n_members > 1:
            self.implemented_properties = (list(type(self).implemented_properties)
                                           + self.committee_properties)
        self._last_charges: list[np.ndarray | None] = [None] * self.n_members
        self._olcao: SiteFeaturizer | None = None
        self._site_state: tuple | None = None  # (b, q, phi) of the last call, for the head
        if self.model.olcao:
            recipe = FeatureRecipe.from_dict(self.model.olcao["features"])
            # the head takes this model's chi, so q and phi come from calculate()'s solve
            self._olcao = SiteFeaturizer(recipe, energy_model=self.model)
            self._olcao_recipe = recipe
            self._local_is_model_descriptor = recipe.local == meta["descriptor"]
            self.implemented_properties = (list(type(self).implemented_properties)
                                           + self.olcao_properties)

    @property
    def potential_exponents(self) -> dict[str, np.ndarray]:
        """OLCAO exponent series alpha_i (bohr^-2) per element of the model's head."""
        if self._olcao is None:
            raise CalculatorSetupError(f"{self.model.path} has no OLCAO head")
        return {e: np.asarray(a, dtype=float)
                for e, a in self.model.olcao["exponents"].items()}

    def reset(self):
        super().reset()
        self._last_charges = [None] * self.n_members
        self._site_state = None

    # -------------------------------------------------------------- the physics
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        olcao_only = set(properties) <= set(self.olcao_properties)
        if olcao_only and not system_changes and self._site_state is not None:
            self._potential_coefficients()  # the energy call of this geometry is done
            return
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = len(atoms)
        if n == 0:
            raise ValueError("the structure has no atoms: nothing to compute")
        species = self.descriptor.species(atoms)  # clear error for unknown elements
        total = total_charge_of(atoms, self.total_charge)
        self.guard.check_total_charge(total)
        b_lin, pairs, args = self.descriptor.compute_linear_with_pairs(atoms)
        self.guard.check_distances(species, pairs.i, pairs.j, pairs.rij)
        self.guard.check_descriptors(species, b_lin)
        b = torch.tensor(self.descriptor._with_quadratic(b_lin), device=self.device,
                         requires_grad=True)
        sp = torch.as_tensor(species, device=self.device)
        periodic = bool(np.all(atoms.pbc))
        members = [self._member(k, atoms, b, b_lin, sp, species, pairs, args, total, periodic)
                   for k in range(self.n_members)]
        if self.n_members == 1:
            out = members[0]
        else:
            stats = committee_statistics([m["energies"].sum() for m in members],
                                         np.array([m["forces"] for m in members]),
                                         np.array([m["energies"] for m in members]))
            out = {key: np.mean([m[key] for m in members], axis=0)
                   for key in ("charges", "electronegativities", "stress", "potential")}
            out.update(energies=stats["energies"], forces=stats["forces"])
            self.results["energy_std"] = float(stats["energy_std"])
            self.results["forces_std"] = stats["forces_std"]
            self.results["energies_std"] = stats["energies_std"]
            self.results["committee_energy"] = np.array([m["energies"].sum() for m in members])
            self.results["committee_forces"] = np.array([m["forces"] for m in members])
            self.results["committee_charges"] = np.array([m["charges"] for m in members])
            self.committee_check.check(self.results["energy_std"], stats["forces_std"],
                                       atoms.get_chemical_symbols())

        energies = out["energies"]
        self.results["energies"] = energies
        self.results["energy"] = self.results["free_energy"] = float(energies.sum())
        self.results["forces"] = out["forces"]
        self.results["charges"] = out["charges"]
        self.results["electronegativities"] = out["electronegativities"]
        if periodic:
            self.results["stress"] = out["stress"]
        self._site_state = (b.detach().cpu().numpy(), out["charges"], out["potential"])
        if set(properties) & set(self.olcao_properties):
            self._potential_coefficients()

    def _member(self, k, atoms, b, b_lin, sp, species, pairs, args, total, periodic) -> dict:
        """Energies, forces, stress, charges, chi and potentials of committee member k
        (the model itself for a single model file) from this call's bispectrum ``b``."""
        n = len(atoms)
        single = self.n_members == 1
        chi_t = self.module(b, sp) if single else self.module.member_chi(k, b, sp)
        chi = chi_t.detach().cpu().numpy().astype(float)
        params = self._member_params[k]
        hard, wid = params["hardness"][species], params["widths"][species]
        last = self._last_charges[k]
        warm = last if (last is not None and len(last) == n) else None
        res = equilibrate(atoms, chi, hard, wid, total_charge=total, initial_charges=warm,
                          **self.solver_options)
        q = np.asarray(res.charges, dtype=float)
        phi = np.asarray(res.potential, dtype=float)
        self._last_charges[k] = q.copy()

        # per-atom energies: E_es = q.phi/2 split evenly
        energies = params["e0"][species] + chi * q + 0.5 * hard * q * q + 0.5 * q * phi
        forces = np.array(res.forces, dtype=float)
        stress = np.array(res.stress, dtype=float) if periodic and res.stress is not None \
            else np.zeros(6)
        q_t = torch.tensor(q, device=self.device)
        weight = q_t  # dE/dchi_i
        grads = []
        if self.has_short:
            q_t.requires_grad_(True)
            e_short = (self.module.short_energy(b, q_t, sp) if single
                       else self.module.member_short_energy(k, b, q_t, sp))
            energies = energies + e_short.detach().cpu().numpy()
            ds_dq, ds_db = torch.autograd.grad(e_short.sum(), (q_t, b), retain_graph=True)
            # adjoint solve: [A + J, 1; 1, 0] (mu, nu) = (-dE_short/dq, 0)
            mu = np.asarray(equilibrate(atoms, ds_dq.cpu().numpy(), hard, wid,
                                        total_charge=0.0, **self.solver_options).charges)
            weight = q_t.detach() + torch.tensor(mu, device=self.device)
            grads.append(ds_db)
            f_mu, s_mu = self._mu_dphi(atoms, wid, q, mu, self.solver_options.get("accuracy"))
            forces += f_mu
            stress += s_mu
        (dchi_db,) = torch.autograd.grad(chi_t, b, grad_outputs=weight.detach())
        beta = dchi_db + sum(grads) if grads else dchi_db
        beta_lin = self.descriptor._effective_beta(beta.detach().cpu().numpy(), b_lin)
        dedr = self.descriptor.pair_forces(args, beta_lin)
        f_desc, dedstrain = accumulate_pair_forces(dedr, pairs.i, pairs.j, pairs.rij, n)
        forces += f_desc
        if periodic:
            stress += full_3x3_to_voigt_6_stress(dedstrain / atoms.get_volume())
        return {"energies": energies, "forces": forces, "stress": stress, "charges": q,
                "electronegativities": chi, "potential": phi}

    def _potential_coefficients(self) -> None:
        """Mean and std of the OLCAO coefficients from the last call's B, q and phi."""
        if self._olcao is None:
            raise CalculatorSetupError(f"{self.model.path} has no OLCAO head; train one with "
                                       f"an 'olcao' section in the training config")
        b, q, phi = self._site_state
        feats = self._olcao.assemble(self.atoms, q, phi,
                                     local=b if self._local_is_model_descriptor else None)
        x = torch.as_tensor(feats.for_recipe(self._olcao_recipe), device=self.device)
        sp = torch.as_tensor(feats.species, device=self.device)
        with torch.no_grad():
            mean, std = self.module.potential_coefficients(x, sp)
        self.results["potential_coefficients"] = mean.cpu().numpy()
        self.results["potential_coefficients_std"] = std.cpu().numpy()

    @staticmethod
    def _mu_dphi(atoms, widths, q, mu, accuracy=None):
        """Forces and stress of -mu . phi(q): the electrostatic part of the adjoint term."""
        periodic = bool(np.all(atoms.pbc))
        n = len(atoms)
        kernel = n <= KERNEL_MAX_PERIODIC if periodic else n > DENSE_MAX_ATOMS["free"]
        if kernel:
            # the C++ kernel, with the parameters the torch direct sum uses up to
            # KERNEL_MAX_PERIODIC atoms: forces and virial of 1/2 mu.A.q, twice
            es = kernel_electrostatics(atoms, widths, accuracy)
            forces, virial = es.forces(np.asarray(mu, dtype=float), np.asarray(q, dtype=float))
            if not periodic:
                return 2.0 * forces, np.zeros(6)
            # ASE stress (1/V) dE/d strain = -W / V
            return 2.0 * forces, full_3x3_to_voigt_6_stress(-2.0 * virial / es.volume)
        kwargs = {} if accuracy is None else {"accuracy": accuracy}
        es = Electrostatics(atoms.positions, atoms.cell.array, periodic, widths, **kwargs)
        with torch.enable_grad():
            pos = torch.tensor(atoms.positions, requires_grad=True)
            strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
            deform = torch.eye(3, dtype=torch.float64) + strain
            cell = torch.tensor(atoms.cell.array) @ deform if periodic else None
            phi = es.potential(torch.tensor(q), positions=pos @ deform, cell=cell)
            val = torch.dot(torch.tensor(mu), phi)
            g_pos, g_strain = torch.autograd.grad(val, (pos, strain), allow_unused=True)
        forces = -g_pos.numpy()
        stress = np.zeros(6)
        if periodic and g_strain is not None:
            stress = full_3x3_to_voigt_6_stress(g_strain.numpy() / atoms.get_volume())
        return forces, stress
