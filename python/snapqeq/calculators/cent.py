"""ASE calculator for exported snapqeq models (CENT, optionally with a short-range network).

    atoms.calc = SnapQEqCalculator("model.pt")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_charges()

Per call: bispectrum (C++ kernel) -> chi from the TorchScript network -> global charge
equilibration (:func:`snapqeq.electrostatics.qeq.equilibrate`, dense or iterative by size,
warm-started from the previous charges) -> energy; forces and stress are the Hellmann-Feynman terms
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
(:mod:`snapqeq.models.committee` defines them), with an optional threshold that warns or stops.
Units: eV, Angstrom, e.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch
from ase.calculators.calculator import (
    Calculator,
    CalculatorSetupError,
    Parameters,
    all_changes,
    equal,
)
from ase.stress import full_3x3_to_voigt_6_stress

from snapqeq._sna import accumulate_pair_forces
from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.electrostatics.ewald import Electrostatics
from snapqeq.electrostatics.qeq import (
    DENSE_MAX_ATOMS,
    KERNEL_MAX_PERIODIC,
    equilibrate,
    fixed_charge_forces,
    kernel_electrostatics,
    total_charge_of,
)
from snapqeq.io.model_file import LoadedModel, load_model
from snapqeq.models.committee import CommitteeCheck, committee_statistics
from snapqeq.models.guard import Guard
from snapqeq.models.site_features import FeatureRecipe, SiteFeaturizer

#: the keyword arguments of :func:`snapqeq.electrostatics.qeq.equilibrate` that are
#: calculator parameters
SOLVER_PARAMETERS = ("method", "tol", "accuracy", "max_iter")
#: the values of the ``method`` parameter (:func:`snapqeq.electrostatics.qeq.equilibrate`)
METHODS = ("auto", "dense", "cg", "kernel")
#: results that need the force computation (the adjoint terms, the pair forces)
FORCE_PROPERTIES = frozenset({"forces", "stress", "forces_std"})


def _solver_defaults() -> dict:
    signature = inspect.signature(equilibrate).parameters
    return {key: signature[key].default for key in SOLVER_PARAMETERS}


class SnapQEqCalculator(Calculator):
    """ASE calculator of a snapqeq model file.

    Every setting is a calculator parameter (:attr:`default_parameters`): it lives in
    ``calc.parameters``, ``calc.set(key=value)`` changes it (and discards the results;
    a new ``model`` is loaded), ``calc.todict()`` returns the non-default ones (the model
    as its path) and ``SnapQEqCalculator(**calc.todict())`` rebuilds the calculator.
    ASE's own keywords (``label``, ``directory``, ``atoms``) are accepted as well; any
    other keyword is a TypeError naming the allowed ones.

    Parameters
    ----------
    model : str, Path or LoadedModel
        Path of the exported TorchScript model (``snapqeq export`` / training output),
        or a model file loaded with :func:`snapqeq.io.model_file.load_model`.
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
        What the geometry/extrapolation guard (:mod:`snapqeq.models.guard`, the same checks and
        messages as ``pair_style snapqeq ... guard``) does: ``"stop"`` raises ValueError
        for too-close pairs and a total charge outside the trained range and warns when a
        bispectrum component leaves the training range; ``"strict"`` raises for all
        three; ``"warn"`` only warns.  A model file without the training envelope (older
        versions) gets the checks it has and one warning saying so.
    committee_threshold : (float or None, float or None), optional
        For a committee model file (``snapqeq train`` with ``committee: n``): the largest
        energy std per atom (eV/atom) and per-atom force std (eV/Angstrom) accepted, None
        for either to skip it (:class:`snapqeq.models.committee.CommitteeCheck`).
    committee_action : {"warn", "stop"}
        What a spread above ``committee_threshold`` does: a warning, or ValueError naming
        the threshold and the value.
    method, tol, accuracy, max_iter
        Charge-equilibration solver options, passed to
        :func:`snapqeq.electrostatics.qeq.equilibrate`
        (defaults: its own).

    Only what is asked for is computed: an energy (or charges) call skips the forces,
    stress and adjoint terms; a later forces call for the same geometry adds them to the
    same solve, so the results equal those of one call asking for everything.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "charges"]
    #: per-site results of a model with an OLCAO head: (N, D) Hartree, NaN beyond an
    #: element's exponent series (see :attr:`potential_exponents`)
    olcao_properties = ["potential_coefficients", "potential_coefficients_std"]
    #: results of a committee model file (besides the members' mean as energy, forces,
    #: stress, charges): energy std (eV), per-atom force std (eV/A) and energy std (eV)
    committee_properties = ["energy_std", "forces_std", "energies_std"]
    default_parameters = {
        "model": "model.pt",
        "total_charge": None,
        "device": "cpu",
        "min_distance_factor": None,
        "guard": "stop",
        "committee_threshold": None,
        "committee_action": "warn",
        **_solver_defaults(),
    }
    #: keywords of :class:`ase.calculators.calculator.Calculator` itself
    ase_keywords = ("restart", "label", "atoms", "directory")

    def __init__(self, model=None, **kwargs):
        self.model: LoadedModel | None = None  # the loaded file of parameters["model"]
        self._in_init = False
        self._state: dict | None = None
        self._last_charges: list[np.ndarray | None] = []
        self._site_state: tuple | None = None
        if model is not None:
            kwargs["model"] = model
        self._check_keywords(set(kwargs) - set(self.ase_keywords))
        self._in_init = True  # (the stack level of the guard's warning)
        Calculator.__init__(self, **kwargs)  # its set() loads the model
        self._in_init = False

    @classmethod
    def _check_keywords(cls, keys) -> None:
        unknown = sorted(set(keys) - set(cls.default_parameters))
        if unknown:
            raise TypeError(
                f"SnapQEqCalculator: unknown parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; the parameters are "
                f"{', '.join(cls.default_parameters)} (and ASE's "
                f"{', '.join(cls.ase_keywords)})")

    def set(self, **kwargs) -> dict:
        """Change parameters; returns the changed ones (and then discards the results).

        A new ``model`` is loaded; the guard and the committee check are rebuilt from the
        parameters they depend on.  Unknown keys raise TypeError before anything changes.
        """
        if "parameters" in kwargs:  # ASE: parameters read from a file
            filename = kwargs.pop("parameters")
            kwargs = dict(Parameters.read(filename), **kwargs)
        self._check_keywords(kwargs)
        loaded = None
        if isinstance(kwargs.get("model"), LoadedModel):
            loaded = kwargs["model"]
            kwargs["model"] = str(loaded.path)
        elif "model" in kwargs:
            kwargs["model"] = str(kwargs["model"])
        candidate = dict(self.parameters, **kwargs)
        changed = {key for key, value in kwargs.items()
                   if key not in self.parameters or not equal(value, self.parameters[key])}
        if loaded is not None and loaded is not self.model:
            changed.add("model")
        if self.model is None:
            changed |= set(self.default_parameters)
        if changed:
            # build everything first: a bad value leaves the calculator as it was
            self._setup(candidate, changed, loaded)
        out = Calculator.set(self, **kwargs)
        if changed:
            self.reset()
        return out

    def _setup(self, params: dict, changed: set, loaded: LoadedModel | None) -> None:
        """The objects derived from the parameters: the model file and its constants,
        the guard, the committee check, the torch device."""
        new_model = self.model is None or "model" in changed
        model = self.model
        if new_model:
            model = loaded if loaded is not None else load_model(params["model"])
            meta = model.metadata
            descriptor = Bispectrum.from_dict(meta["descriptor"])
            if list(descriptor.elements) != list(meta["elements"]):
                raise CalculatorSetupError("model descriptor and element list disagree")
        meta = model.metadata
        device = torch.device(params["device"])
        if params["method"] not in METHODS:  # equilibrate would refuse it at the first call
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not "
                             f"{params['method']!r}")
        guard = self.guard if hasattr(self, "guard") else None
        if new_model or changed & {"guard", "min_distance_factor"}:
            guard = Guard(meta, params["guard"], params["min_distance_factor"])
        check = self.committee_check if hasattr(self, "committee_check") else None
        if new_model or changed & {"committee_threshold", "committee_action"}:
            check = CommitteeCheck(params["committee_threshold"], params["committee_action"])
            if check.active and model.committee == 1:
                raise CalculatorSetupError(f"committee_threshold needs a committee model "
                                           f"file; {model.path} holds a single model")
        # nothing raised: commit
        self.guard, self.committee_check = guard, check
        if guard.limitations and (new_model or changed & {"guard", "min_distance_factor"}):
            warnings.warn(f"{model.path}: {guard.limitations}", UserWarning,
                          stacklevel=5 if self._in_init else 3)
        if new_model:
            self._load(model, descriptor)
        if new_model or "device" in changed:
            self.module = self.model.module.to(device)

    def _load(self, model: LoadedModel, descriptor: Bispectrum) -> None:
        self.model = model
        meta = model.metadata
        self.descriptor = descriptor
        self.hardness = np.asarray(meta["hardness"], dtype=float)
        self.widths = np.asarray(meta["widths"], dtype=float)
        self.e0 = np.asarray(meta["e0"], dtype=float)
        self.has_short = bool(meta["has_short_range"])
        #: committee members in the file (1: a single model)
        self.n_members = model.committee
        self._member_params = [
            {key: np.asarray(m[key], dtype=float) for key in ("hardness", "widths", "e0")}
            for m in (meta["members"] if self.n_members > 1
                      else [{"hardness": meta["hardness"], "widths": meta["widths"],
                             "e0": meta["e0"]}])]
        self.implemented_properties = list(type(self).implemented_properties)
        if self.n_members > 1:
            self.implemented_properties += self.committee_properties
        self._olcao: SiteFeaturizer | None = None
        if model.olcao:
            recipe = FeatureRecipe.from_dict(model.olcao["features"])
            # the head takes this model's chi, so q and phi come from calculate()'s solve
            self._olcao = SiteFeaturizer(recipe, energy_model=model)
            self._olcao_recipe = recipe
            self._local_is_model_descriptor = recipe.local == meta["descriptor"]
            self.implemented_properties += self.olcao_properties

    @property
    def device(self) -> torch.device:
        return torch.device(self.parameters["device"])

    @property
    def solver_options(self) -> dict:
        """The keyword arguments of :func:`snapqeq.electrostatics.qeq.equilibrate` from the
        parameters."""
        return {key: self.parameters[key] for key in SOLVER_PARAMETERS}

    def todict(self, skip_default: bool = True) -> dict:
        """The parameters (JSON types; the model as its path, always included)."""
        out = Calculator.todict(self, skip_default)
        out["model"] = str(self.parameters["model"])
        if out.get("committee_threshold") is not None:
            out["committee_threshold"] = list(out["committee_threshold"])
        return out

    @property
    def potential_exponents(self) -> dict[str, np.ndarray]:
        """OLCAO exponent series alpha_i (bohr^-2) per element of the model's head."""
        if self._olcao is None:
            raise CalculatorSetupError(f"{self.model.path} has no OLCAO head")
        return {e: np.asarray(a, dtype=float)
                for e, a in self.model.olcao["exponents"].items()}

    def reset(self):
        super().reset()
        self._last_charges = [None] * getattr(self, "n_members", 0)
        self._site_state = None
        self._state = None

    def _needs_forces(self, properties) -> bool:
        return bool(FORCE_PROPERTIES & set(properties)) or (
            self.n_members > 1 and self.committee_check.force is not None)

    # -------------------------------------------------------------- the physics
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        olcao_only = set(properties) <= set(self.olcao_properties)
        if olcao_only and not system_changes and self._site_state is not None:
            self._potential_coefficients()  # the energy call of this geometry is done
            return
        # the same geometry as the last call, which skipped the forces: add them to it
        resume = not system_changes and self._state is not None
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        with_forces = self._needs_forces(properties)
        if resume:
            state = self._state
        else:
            state = self._state = self._evaluate(atoms, with_forces)
        members = state["members"]
        if with_forces:
            for k, m in enumerate(members):
                if "forces" not in m:
                    self._member_forces(k, m, state)
        self._store(state, members, with_forces, first=not resume)
        if set(properties) & set(self.olcao_properties):
            self._potential_coefficients()

    def _evaluate(self, atoms, with_forces: bool) -> dict:
        """Descriptor, guard checks and every member's energies and charges."""
        n = len(atoms)
        if n == 0:
            raise ValueError("the structure has no atoms: nothing to compute")
        species = self.descriptor.species(atoms)  # clear error for unknown elements
        total = total_charge_of(atoms, self.parameters["total_charge"])
        self.guard.check_total_charge(total)
        b_lin, pairs, args = self.descriptor.compute_linear_with_pairs(atoms)
        self.guard.check_distances(species, pairs.i, pairs.j, pairs.rij)
        self.guard.check_descriptors(species, b_lin)
        device = self.device
        b = torch.tensor(self.descriptor.with_quadratic(b_lin), device=device,
                         requires_grad=True)
        state = {"atoms": atoms, "b": b, "b_lin": b_lin, "pairs": pairs, "args": args,
                 "species": species, "sp": torch.as_tensor(species, device=device),
                 "periodic": bool(np.all(atoms.pbc))}
        state["members"] = [self._member_energy(k, state, total, with_forces)
                            for k in range(self.n_members)]
        return state

    def _member_energy(self, k: int, state: dict, total: float, with_forces: bool) -> dict:
        """Energies, charges, chi and potentials of committee member k (the model itself
        for a single model file) from this call's bispectrum, with the electrostatic
        forces at fixed charges when ``with_forces``."""
        atoms, b, sp, species = state["atoms"], state["b"], state["sp"], state["species"]
        n = len(atoms)
        single = self.n_members == 1
        chi_t = self.module(b, sp) if single else self.module.member_chi(k, b, sp)
        chi = chi_t.detach().cpu().numpy().astype(float)
        params = self._member_params[k]
        hard, wid = params["hardness"][species], params["widths"][species]
        last = self._last_charges[k]
        warm = last if (last is not None and len(last) == n) else None
        res = equilibrate(atoms, chi, hard, wid, total_charge=total, initial_charges=warm,
                          compute_forces=with_forces, **self.solver_options)
        q = np.asarray(res.charges, dtype=float)
        phi = np.asarray(res.potential, dtype=float)
        self._last_charges[k] = q.copy()

        # per-atom energies: E_es = q.phi/2 split evenly
        energies = params["e0"][species] + chi * q + 0.5 * hard * q * q + 0.5 * q * phi
        q_t = torch.tensor(q, device=self.device)
        member = {"chi_t": chi_t, "charges": q, "electronegativities": chi, "potential": phi,
                  "hard": hard, "wid": wid, "q_t": q_t, "method": res.method}
        if with_forces:
            member["es_forces"] = (res.forces, res.stress)
        if self.has_short:
            q_t.requires_grad_(True)
            e_short = (self.module.short_energy(b, q_t, sp) if single
                       else self.module.member_short_energy(k, b, q_t, sp))
            energies = energies + e_short.detach().cpu().numpy()
            member["e_short"] = e_short
        member["energies"] = energies
        return member

    def _member_forces(self, k: int, m: dict, state: dict) -> None:
        """Forces and stress of member k: -dE_es/dr at fixed charges, the descriptor term
        and (short-range network) the adjoint term."""
        atoms, b, b_lin = state["atoms"], state["b"], state["b_lin"]
        pairs, periodic = state["pairs"], state["periodic"]
        n = len(atoms)
        options = self.solver_options
        es_forces, es_stress = m.pop("es_forces", None) or fixed_charge_forces(
            atoms, m["wid"], m["charges"], m["method"], options["accuracy"])
        forces = np.array(es_forces, dtype=float)
        stress = np.array(es_stress, dtype=float) if periodic and es_stress is not None \
            else np.zeros(6)
        q_t = m["q_t"]
        weight = q_t  # dE/dchi_i
        grads = []
        if self.has_short:
            ds_dq, ds_db = torch.autograd.grad(m["e_short"].sum(), (q_t, b), retain_graph=True)
            # adjoint solve: [A + J, 1; 1, 0] (mu, nu) = (-dE_short/dq, 0)
            mu = np.asarray(equilibrate(atoms, ds_dq.cpu().numpy(), m["hard"], m["wid"],
                                        total_charge=0.0, compute_forces=False,
                                        **options).charges)
            weight = q_t.detach() + torch.tensor(mu, device=self.device)
            grads.append(ds_db)
            f_mu, s_mu = self._mu_dphi(atoms, m["wid"], m["charges"], mu, options["accuracy"])
            forces += f_mu
            stress += s_mu
        (dchi_db,) = torch.autograd.grad(m["chi_t"], b, grad_outputs=weight.detach())
        beta = dchi_db + sum(grads) if grads else dchi_db
        beta_lin = self.descriptor.effective_beta(beta.detach().cpu().numpy(), b_lin)
        dedr = self.descriptor.pair_forces(state["args"], beta_lin)
        f_desc, dedstrain = accumulate_pair_forces(dedr, pairs.i, pairs.j, pairs.rij, n)
        forces += f_desc
        if periodic:
            stress += full_3x3_to_voigt_6_stress(dedstrain / atoms.get_volume())
        m["forces"], m["stress"] = forces, stress

    def _store(self, state: dict, members: list[dict], with_forces: bool,
               first: bool) -> None:
        """The results of this geometry: the model's, or the committee's mean and spread."""
        atoms = state["atoms"]
        if self.n_members == 1:
            out = members[0]
        else:
            stats = committee_statistics(
                [m["energies"].sum() for m in members],
                np.array([m["forces"] for m in members]) if with_forces else None,
                np.array([m["energies"] for m in members]))
            out = {key: np.mean([m[key] for m in members], axis=0)
                   for key in ("charges", "electronegativities", "potential")}
            out.update(energies=stats["energies"])
            self.results["energy_std"] = float(stats["energy_std"])
            self.results["energies_std"] = stats["energies_std"]
            self.results["committee_energy"] = np.array([m["energies"].sum() for m in members])
            self.results["committee_charges"] = np.array([m["charges"] for m in members])
            if with_forces:
                out.update(forces=stats["forces"],
                           stress=np.mean([m["stress"] for m in members], axis=0))
                self.results["forces_std"] = stats["forces_std"]
                self.results["committee_forces"] = np.array([m["forces"] for m in members])
            if first:  # once per geometry (a force threshold computes the forces at once)
                self.committee_check.check(self.results["energy_std"],
                                           stats.get("forces_std", np.zeros(0)),
                                           atoms.get_chemical_symbols())
        energies = out["energies"]
        self.results["energies"] = energies
        self.results["energy"] = self.results["free_energy"] = float(energies.sum())
        self.results["charges"] = out["charges"]
        self.results["electronegativities"] = out["electronegativities"]
        if with_forces:
            self.results["forces"] = out["forces"]
            if state["periodic"]:
                self.results["stress"] = out["stress"]
        self._site_state = (state["b"].detach().cpu().numpy(), out["charges"], out["potential"])

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
