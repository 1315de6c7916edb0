"""The OLCAO potential-coefficient model: MDN head + feature recipe, training, model file.

:class:`OLCAOModel` predicts, per site, the coefficients A_i (Hartree) of the site's OLCAO
potential function sum_i A_i exp(-alpha_i r^2) on the element's fixed exponent series
alpha_i (bohr^-2), as a mean and a standard deviation per coefficient (SPEC §6).  Its input
is one row of :meth:`snapqeq.models.site_features.SiteFeatures.matrix`: local bispectrum,
medium-range bispectrum and the long-range (q_i in e, phi_i in eV/e) block.

:func:`train_olcao_model` fits it to structures carrying per-site targets in
``atoms.arrays["potential_coefficients"]`` (see :mod:`snapqeq.io.olcao`) by minimising the
mixture negative log-likelihood of the standardised targets (Adam, early stopping on the
validation NLL, then a post-hoc recalibration of the predicted standard deviations on the
validation sites).  By default the network works in the principal axes of the training
deviations A - <A> in the L2 norm of the site potential (``output_basis="potential"``,
:func:`gaussian_overlap`): the Gaussian coefficients are strongly correlated and
ill-conditioned (large oscillating A_i whose combinations hardly change V(r)), so fitting
them one by one wastes the model on directions OLCAO's potential does not see.  The basis
change is part of the scripted module; its inputs and outputs stay in Hartree.

The model file (:func:`export_olcao_model`, :func:`load_olcao_model`) is a TorchScript
archive with ``forward(x, species) -> (mean, std)``, ``nll(x, species, target)`` and
``metadata()``, plus the same JSON as the extra file ``snapqeq.json`` (format
``"snapqeq-olcao-model"``, version 1): elements, feature recipe (both descriptor parameter
sets and the QEq settings), exponent series per element, mixture size, units.  It loads with
``torch.jit.load`` without snapqeq installed.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch import nn

from snapqeq import __version__
from snapqeq.io.archive import METADATA_FILE, LoadedArchive, read_archive, write_archive
from snapqeq.io.olcao import TARGETS_KEY, exponent_series, get_site_targets
from snapqeq.models.mdn import ONE_SIGMA_COVERAGE, MixtureDensityHead
from snapqeq.models.site_features import FeatureRecipe, SiteFeatures, SiteFeaturizer, species_index

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "LoadedOLCAOModel",
    "OLCAOModel",
    "OLCAOTrainConfig",
    "evaluate_olcao_model",
    "export_olcao_model",
    "gaussian_overlap",
    "load_olcao_model",
    "predict_sites",
    "site_targets",
    "train_olcao_model",
    "train_olcao_run",
]

FORMAT = "snapqeq-olcao-model"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "elements", "features", "exponents", "n_inputs",
            "n_components", "hidden", "units")
OUTPUT_BASES = ("potential", "coefficients")
UNITS = {"coefficients": "Hartree", "exponents": "bohr^-2", "length": "Angstrom",
         "charge": "e", "potential": "eV/e"}


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class OLCAOModel(nn.Module):
    """MDN head with the metadata needed to compute its inputs and use its outputs.

    Parameters
    ----------
    recipe : FeatureRecipe
        Site features (fixes the element order and the input width).
    exponents : mapping, optional
        Per-element overrides of OLCAO's exponent series, e.g. ``{"Si": (16, 0.15, 1e6)}``
        (see :func:`snapqeq.io.olcao.exponent_series`); default OLCAO's element database.
    hidden : list of int
        Hidden layer sizes of each element's network.
    n_components : int
        Mixture components K.
    energy_fingerprint : str, optional
        :func:`snapqeq.models.site_features.energy_model_fingerprint` of the energy model that
        supplies chi (recipes with ``chi_source="energy_model"``).

    Notes
    -----
    ``forward(x, species)`` takes x (N, n_inputs) float64 features and species (N,) int64
    element indices and returns (mean, std), each (N, D) in Hartree with D the longest
    series; entries beyond an element's series are NaN.  It is TorchScript-compatible and
    can be called from another scripted module.

    A model can be a deep ensemble (:meth:`add_members`): ``head`` plus the heads in
    ``members``, networks trained from different seeds on the same data.  The prediction
    is then the equal-weight mixture of the members: mean the average of their means,
    variance the average of their variances plus the variance of their means (law of total
    variance), so sigma grows where the networks disagree, typically away from the training
    data.  ``ensemble_std_scale`` (E, D) multiplies the final std (1 = none); it is meant
    for a recalibration from out-of-fold residuals of the training structures.
    """

    # Python-side training records; not part of the scripted module
    __jit_ignored_attributes__ = ["history", "summary", "recipe", "alphas", "_meta_dict"]
    __jit_unused_properties__ = ["elements", "n_out"]

    def __init__(self, recipe: FeatureRecipe, exponents: Mapping | None = None,
                 hidden: Sequence[int] = (32, 32), n_components: int = 3,
                 energy_fingerprint: str | None = None):
        super().__init__()
        self.recipe = recipe
        elements = recipe.elements
        self.alphas = {e: exponent_series(e, overrides=exponents) for e in elements}
        self.head = MixtureDensityHead(len(elements), recipe.n_features,
                                       [len(self.alphas[e]) for e in elements],
                                       list(hidden), n_components)
        self.members = nn.ModuleList()  # further ensemble members (add_members)
        self.register_buffer("ensemble_std_scale",
                             torch.ones(len(elements), self.head.d, dtype=torch.float64))
        self.history = []  # loss per epoch, filled by train_olcao_model
        self.summary = {}  # train / validation metrics
        self._meta_dict = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "snapqeq_version": __version__,
            "elements": elements,
            "features": recipe.to_dict(),
            "feature_names": recipe.feature_names(),
            "exponents": {e: a.tolist() for e, a in self.alphas.items()},
            "n_inputs": recipe.n_features,
            "n_components": int(n_components),
            "hidden": [int(h) for h in hidden],
            "units": UNITS,
            "energy_model_fingerprint": energy_fingerprint,
            "training": {},
        }
        self.meta = json.dumps(self._meta_dict)

    def forward(self, x: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.head.predict(x, species)
        if len(self.members) > 0:
            means, variances = [mean], [std**2]
            for member in self.members:
                m, s = member.predict(x, species)
                means.append(m)
                variances.append(s**2)
            stacked = torch.stack(means)
            mean = stacked.mean(0)
            std = torch.sqrt(torch.stack(variances).mean(0) + stacked.var(0, unbiased=False))
        return mean, std * self.ensemble_std_scale[species]

    @torch.jit.export
    def nll(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per site of standardised targets (Hartree in), of
        the first network (``head``; the training objective of every member)."""
        return self.head.nll(x, species, target)

    def add_members(self, others: Sequence[OLCAOModel]) -> None:
        """Turn this model into a deep ensemble with the networks of ``others`` (trained on
        the same data with other seeds; same feature recipe, exponents and elements).  The
        networks are copied; see the class docstring for how they are combined."""
        for other in others:
            if (other.recipe != self.recipe or other.head.d != self.head.d
                    or any(not np.array_equal(other.alphas[e], a)
                           for e, a in self.alphas.items())):
                raise ValueError("ensemble members need the same feature recipe, elements "
                                 "and exponent series")
            self.members.append(copy.deepcopy(other.head))
        self._meta_dict["ensemble_members"] = 1 + len(self.members)
        self.meta = json.dumps(self._meta_dict)

    @torch.jit.export
    def metadata(self) -> str:
        return self.meta

    # ------------------------------------------------------------- Python side
    @property
    def elements(self) -> list[str]:
        return self.recipe.elements

    @property
    def n_out(self) -> int:
        """D: the longest exponent series (width of the outputs)."""
        return self.head.d

    def set_training_info(self, info: dict) -> None:
        """Record a JSON-able training summary in the metadata."""
        self._meta_dict["training"] = json.loads(json.dumps(info))
        self.meta = json.dumps(self._meta_dict)

    def predict_features(self, features: SiteFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) in Hartree, (N, D) each, for precomputed site features."""
        x = torch.as_tensor(features.for_recipe(self.recipe), dtype=torch.float64)
        with torch.no_grad():
            mean, std = self(x, torch.as_tensor(features.species))
        return mean.numpy(), std.numpy()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class OLCAOTrainConfig:
    """Settings of :func:`train_olcao_model` (the ``snapqeq olcao train`` YAML has the same
    keys, with ``features`` a :class:`FeatureRecipe` dict).

    Attributes
    ----------
    features : FeatureRecipe or dict
    exponents : dict, optional
        Exponent series overrides per element (bohr^-2), see :class:`OLCAOModel`.
    hidden, n_components : network size and mixture components K.
    epochs, batch_size, lr, weight_decay : Adam on mini-batches of ``batch_size`` sites.
    patience : stop after this many epochs without a better validation NLL.
    validation_fraction : share of the data held out for early stopping and calibration.
    split : ``"structure"`` (hold out whole structures; sites of one structure are
        correlated) or ``"site"`` (random sites; for very few structures).
    calibrate : rescale the predicted std on the validation sites
        (:meth:`MixtureDensityHead.calibrate_std`).
    output_basis : ``"potential"`` (default): the network predicts the principal axes of
        the training deviations A - <A> in the L2 norm of the site potential
        sum_i dA_i exp(-alpha_i r^2) (overlap matrix of the Gaussians,
        :func:`gaussian_overlap`), so the likelihood works in uncorrelated, well-conditioned
        coordinates ordered by their effect on V(r); ``"coefficients"``: every A_i on its
        own.  Either way the model file takes and returns A_i in Hartree.
    seed : initialisation, split and batch order; the same seed gives the same model.
    ensemble : number of networks of a deep ensemble (:meth:`OLCAOModel.add_members`),
        trained with seeds ``seed``, ``seed + 1``, ... (each with its own validation split
        and recalibration); 1 = a single network.
    progress : tqdm progress bars.
    num_threads : torch intra-op threads during training (restored afterwards); None keeps
        the current setting.  The per-site networks are small, so 1 is usually fastest,
        and much faster on a busy machine, where idle-spinning threads stall every step.
    """

    features: FeatureRecipe | dict
    exponents: dict | None = None
    hidden: list = field(default_factory=lambda: [32, 32])
    n_components: int = 3
    epochs: int = 400
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 40
    validation_fraction: float = 0.2
    split: str = "structure"
    calibrate: bool = True
    output_basis: str = "potential"
    seed: int = 0
    ensemble: int = 1
    progress: bool = True
    num_threads: int | None = None

    def __post_init__(self):
        if isinstance(self.features, Mapping):
            self.features = FeatureRecipe.from_dict(self.features)
        if self.output_basis not in OUTPUT_BASES:
            raise ValueError(f"output_basis must be one of {OUTPUT_BASES}, "
                             f"got {self.output_basis!r}")
        if self.split not in ("structure", "site"):
            raise ValueError(f"split must be 'structure' or 'site', got {self.split!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must lie in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 1:
            raise ValueError("epochs, batch_size, patience and lr must be positive")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d


def gaussian_overlap(alphas: np.ndarray) -> np.ndarray:
    """Overlap matrix S_ij = integral exp(-(alpha_i + alpha_j) r^2) d^3r
    = (pi / (alpha_i + alpha_j))^(3/2) (bohr^3) of one site's Gaussians (alpha in
    bohr^-2): dA^T S dA is the squared L2 norm (Hartree^2 bohr^3) of the site potential
    change sum_i dA_i exp(-alpha_i r^2)."""
    a = np.asarray(alphas, dtype=float)
    return (np.pi / (a[:, None] + a[None, :])) ** 1.5


def site_targets(atoms: Atoms, model: OLCAOModel) -> np.ndarray:
    """The (N, D) targets of a structure for ``model`` (Hartree, NaN-padded).

    ``atoms.arrays["potential_coefficients"]`` must hold at least an element's series
    length of values per site; further values must be NaN padding.  NaN inside a series
    marks a missing target (ignored by the loss).
    """
    raw = get_site_targets(atoms)
    species = species_index(atoms, model.elements)
    out = np.full((len(atoms), model.n_out), np.nan)
    for e, element in enumerate(model.elements):
        rows = species == e
        if not rows.any():
            continue
        n = len(model.alphas[element])
        block = raw[rows]
        if block.shape[1] < n or not np.all(np.isnan(block[:, n:])):
            raise ValueError(
                f"{element}: {TARGETS_KEY} has {block.shape[1]} columns with values beyond "
                f"the element's {n}-term exponent series (extra columns must be NaN)"
                if block.shape[1] >= n else
                f"{element}: {TARGETS_KEY} has {block.shape[1]} columns, the element's "
                f"exponent series has {n} terms")
        out[rows, :n] = block[:, :n]
    return out


def _stack(features: Sequence[SiteFeatures], targets: Sequence[np.ndarray] | None,
           recipe: FeatureRecipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = torch.as_tensor(np.concatenate([f.for_recipe(recipe) for f in features]),
                        dtype=torch.float64)
    sp = torch.as_tensor(np.concatenate([f.species for f in features]), dtype=torch.int64)
    y = None if targets is None else torch.as_tensor(np.concatenate(targets),
                                                     dtype=torch.float64)
    return x, sp, y


def _split(n_structures: int, sizes: Sequence[int], config: OLCAOTrainConfig,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Boolean site masks (train, validation)."""
    n_sites = int(sum(sizes))
    val = np.zeros(n_sites, dtype=bool)
    if config.validation_fraction == 0.0:
        return ~val, val
    if config.split == "site":
        pick = rng.permutation(n_sites)[: max(1, round(config.validation_fraction * n_sites))]
        val[pick] = True
    else:
        if n_structures < 2:
            raise ValueError("split='structure' needs at least two structures; use "
                             "split='site' or pass a validation set")
        n_val = min(n_structures - 1, max(1, round(config.validation_fraction * n_structures)))
        chosen = set(rng.permutation(n_structures)[:n_val].tolist())
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for s in chosen:
            val[offsets[s]:offsets[s + 1]] = True
    return ~val, val


def _metrics(model: OLCAOModel, x: torch.Tensor, sp: torch.Tensor, y: torch.Tensor) -> dict:
    with torch.no_grad():
        mean, std = model(x, sp)
        nll = float(model.nll(x, sp, y))
    mean, std, y = mean.numpy(), std.numpy(), y.numpy()
    valid = np.isfinite(y) & np.isfinite(mean)
    err = np.where(valid, mean - y, np.nan)
    with warnings.catch_warnings():  # all-NaN columns (no targets) give NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        per_coeff = np.sqrt(np.nanmean(err**2, axis=0))
        centred = np.where(valid, y - np.nanmean(np.where(valid, y, np.nan), axis=0), 0.0)
    spread = float(np.sum(centred**2))
    return {
        "n_sites": int(len(y)),
        "rmse": float(np.sqrt(np.mean(err[valid] ** 2))),
        "mae": float(np.mean(np.abs(err[valid]))),
        "rmse_per_coefficient": [float(v) for v in per_coeff],
        "r2": 1.0 - float(np.sum(err[valid] ** 2)) / spread if spread > 0 else math.nan,
        "coverage_1sigma": float(np.mean(np.abs(err[valid]) <= std[valid])),
        "nll": nll,
    }


def evaluate_olcao_model(model: OLCAOModel, features: Sequence[SiteFeatures],
                         targets: Sequence[np.ndarray]) -> dict:
    """Accuracy and calibration of predictions against (N, D) targets (Hartree).

    Returns a dict with ``n_sites``, ``rmse`` and ``mae`` (Hartree, pooled over all valid
    coefficients), ``rmse_per_coefficient`` (D,), ``r2`` (1 - squared error / spread of
    each coefficient about its mean over these sites), ``coverage_1sigma`` (fraction of
    |A - mean| <= std; 0.683 for a calibrated Gaussian) and ``nll`` (per site,
    standardised units).
    """
    return _metrics(model, *_stack(features, targets, model.recipe))


def _fit(model: OLCAOModel, config: OLCAOTrainConfig, train, val
         ) -> tuple[float, dict, list[dict]]:
    """Adam on mini-batches of sites, early stopping on the validation NLL (the training NLL
    without validation sites); returns (best NLL, best state, history)."""
    from tqdm import tqdm

    x, sp, y = train
    xv, spv, yv = val
    has_val = len(yv) > 0
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(1, config.patience // 4))
    gen = torch.Generator().manual_seed(config.seed)
    best, best_state, bad = math.inf, copy.deepcopy(model.state_dict()), 0
    history: list[dict] = []
    bar = tqdm(range(config.epochs), desc="OLCAO MDN", unit="epoch",
               disable=not config.progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for k in range(0, len(order), config.batch_size):
            rows = order[k:k + config.batch_size]
            opt.zero_grad()
            loss = model.nll(x[rows], sp[rows], y[rows])
            loss.backward()
            # the NLL gradient blows up when a width collapses onto an outlier; clip it
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            total += float(loss.detach()) * len(rows)
        model.eval()
        with torch.no_grad():
            val = float(model.nll(xv, spv, yv)) if has_val else math.nan
        row = {"epoch": epoch, "train_nll": total / len(y), "validation_nll": val}
        history.append(row)
        monitor = val if has_val else row["train_nll"]
        sched.step(monitor)
        if monitor < best:
            best, best_state, bad = monitor, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        bar.set_postfix(train=f"{row['train_nll']:.3f}", val=f"{val:.3f}")
        if bad >= config.patience:
            break
    return best, best_state, history


def train_olcao_model(structures: Sequence[Atoms], config: OLCAOTrainConfig, *,
                      energy_model=None, validation: Sequence[Atoms] | None = None,
                      features: Sequence[SiteFeatures] | None = None,
                      validation_features: Sequence[SiteFeatures] | None = None) -> OLCAOModel:
    """Train an :class:`OLCAOModel` on structures with per-site targets.

    Parameters
    ----------
    structures : list of Atoms
        Each with ``arrays["potential_coefficients"]`` (N, >= N_alpha) in Hartree.
    config : OLCAOTrainConfig
    energy_model : path or LoadedModel, optional
        The energy model that supplies chi when ``config.features.chi_source`` is
        ``"energy_model"``.
    validation : list of Atoms, optional
        Explicit validation structures (otherwise split off by ``config``).
    features, validation_features : lists of SiteFeatures, optional
        Precomputed features of ``structures`` / ``validation`` (must contain every block
        the recipe uses), e.g. to train with and without the long-range block on the same
        data.

    Returns
    -------
    OLCAOModel
        With the weights of the best validation epoch; ``model.history`` holds the loss per
        epoch and ``model.summary`` the train/validation metrics
        (:func:`evaluate_olcao_model`).
    """
    recipe = config.features
    structures = list(structures)
    if not structures:
        raise ValueError("no training structures")
    featurizer = None
    if features is None or (validation is not None and validation_features is None):
        featurizer = SiteFeaturizer(recipe, energy_model)
    fingerprint = featurizer.energy_fingerprint if featurizer is not None else None
    if features is None:
        features = featurizer.many(structures, progress=config.progress)
    if len(features) != len(structures):
        raise ValueError(f"{len(features)} feature sets for {len(structures)} structures")
    if config.ensemble > 1:
        if validation is not None and validation_features is None:
            validation_features = featurizer.many(validation, progress=config.progress)
        members = [train_olcao_model(structures, replace(config, ensemble=1, seed=config.seed + m),
                                     validation=validation, features=features,
                                     validation_features=validation_features)
                   for m in range(config.ensemble)]
        model = members[0]
        model.add_members(members[1:])
        if fingerprint is not None:  # the members got features, not the energy model
            model._meta_dict["energy_model_fingerprint"] = fingerprint
        # the members' summaries are of one network on its own split: measure the ensemble
        # on all training structures (and an explicit validation set)
        model.summary = {"train": evaluate_olcao_model(
            model, features, [site_targets(a, model) for a in structures])}
        if validation is not None:
            model.summary["validation"] = evaluate_olcao_model(
                model, validation_features, [site_targets(a, model) for a in validation])
        info = json.loads(model.meta)["training"]
        info.update(config=config.to_dict(), metrics=model.summary,
                    member_epochs_run=[len(m.history) for m in members])
        model.set_training_info(info)
        return model

    with torch.random.fork_rng():  # seeded initialisation without touching global state
        torch.manual_seed(config.seed)
        model = OLCAOModel(recipe, config.exponents, config.hidden, config.n_components,
                           energy_fingerprint=fingerprint)
    targets = [site_targets(a, model) for a in structures]
    x, sp, y = _stack(features, targets, recipe)
    rng = np.random.default_rng(config.seed)
    if validation is not None:
        if validation_features is None:
            validation_features = featurizer.many(validation, progress=config.progress)
        xv, spv, yv = _stack(validation_features,
                             [site_targets(a, model) for a in validation], recipe)
    else:
        train_mask, val_mask = _split(len(structures), [len(a) for a in structures], config,
                                      rng)
        tm, vm = torch.as_tensor(train_mask), torch.as_tensor(val_mask)
        xv, spv, yv = x[vm], sp[vm], y[vm]
        x, sp, y = x[tm], sp[tm], y[tm]
    has_val = len(yv) > 0
    metric = None
    if config.output_basis == "potential":
        metric = [torch.as_tensor(gaussian_overlap(model.alphas[e])) for e in model.elements]
    model.head.set_scaling(x, sp, y, metric)

    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        best, best_state, history = _fit(model, config, (x, sp, y), (xv, spv, yv))
    finally:
        torch.set_num_threads(threads)
    model.load_state_dict(best_state)
    model.eval()
    if config.calibrate:
        if has_val:
            model.head.calibrate_std(xv, spv, yv)
        else:
            warnings.warn("no validation sites: predicted std left uncalibrated", stacklevel=2)
    model.history = history

    model.summary = {"train": _metrics(model, x, sp, y)}
    if has_val:
        model.summary["validation"] = _metrics(model, xv, spv, yv)
    model.set_training_info({
        "config": config.to_dict(), "epochs_run": len(history),
        "best_monitor_nll": best, "metrics": model.summary,
        "std_scale": model.head.std_scale.tolist(),
        "one_sigma_target": ONE_SIGMA_COVERAGE})
    return model


DATA_KEYS = ("data", "validation", "test")


def _read_images(spec) -> list[Atoms]:
    """All frames of one file or of a list of files."""
    from snapqeq.io.structures import read_structures

    paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
    return [atoms for p in paths for atoms in read_structures(p)]


def train_olcao_run(raw: Mapping, out: str | Path, energy_model=None) -> OLCAOModel:
    """A complete training run from a config mapping; writes its records into ``out``.

    ``raw`` has the keys of :class:`OLCAOTrainConfig` and

    - ``data``: extended-XYZ file(s) with ``potential_coefficients`` per site (Hartree);
    - ``validation`` (optional): file(s) for early stopping and calibration instead of a
      split of ``data``;
    - ``test`` (optional): file(s) evaluated at the end (metrics and ``parity.png``).

    Writes ``history.json`` and ``metrics.json`` (train / validation / test), and
    ``parity.png`` with a test set; returns the trained model (not yet exported).  Used by
    ``snapqeq olcao train`` and by the ``olcao`` section of ``snapqeq train``.
    """
    from snapqeq.analysis.plots import coefficient_parity_plot

    known = {f.name for f in fields(OLCAOTrainConfig)} | set(DATA_KEYS)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown OLCAO training keys {sorted(unknown)}")
    if "data" not in raw:
        raise ValueError("OLCAO training needs 'data' (structures with "
                         f"arrays[{TARGETS_KEY!r}])")
    config = OLCAOTrainConfig(**{k: v for k, v in raw.items() if k not in DATA_KEYS})
    train = _read_images(raw["data"])
    validation = _read_images(raw["validation"]) if raw.get("validation") else None
    model = train_olcao_model(train, config, energy_model=energy_model, validation=validation)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if raw.get("test"):
        test = _read_images(raw["test"])
        feats = SiteFeaturizer(config.features, energy_model).many(test, config.progress)
        targets = [site_targets(a, model) for a in test]
        model.summary["test"] = evaluate_olcao_model(model, feats, targets)
        pred = [model.predict_features(f) for f in feats]
        coefficient_parity_plot(np.concatenate([p[0] for p in pred]),
                                np.concatenate([p[1] for p in pred]), np.concatenate(targets),
                                out / "parity.png", title="test set")
    (out / "history.json").write_text(json.dumps(model.history))
    (out / "metrics.json").write_text(json.dumps(model.summary, indent=1))
    for name, m in model.summary.items():
        print(f"[{name}] sites {m['n_sites']}  RMSE {m['rmse']:.4g} Ha  MAE {m['mae']:.4g} Ha"
              f"  within 1 sigma {100 * m['coverage_1sigma']:.1f}%")
    return model


# --------------------------------------------------------------------------------------------
# Model file
# --------------------------------------------------------------------------------------------


def export_olcao_model(model: OLCAOModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write the TorchScript OLCAO model file; refuses to replace a file by default."""
    return write_archive(model, model.meta, path, overwrite)


@dataclass
class LoadedOLCAOModel(LoadedArchive):
    """A validated OLCAO model file: the scripted module and its metadata."""

    @property
    def recipe(self) -> FeatureRecipe:
        return FeatureRecipe.from_dict(self.metadata["features"])

    @property
    def exponents(self) -> dict[str, np.ndarray]:
        """alpha_i per element (bohr^-2)."""
        return {e: np.asarray(a, dtype=float) for e, a in self.metadata["exponents"].items()}

    def __call__(self, x: torch.Tensor,
                 species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module(x, species)


def load_olcao_model(path: str | Path) -> LoadedOLCAOModel:
    """Load and validate an OLCAO model file (format name, version, required fields)."""
    module, meta = read_archive(path, FORMAT, FORMAT_VERSION, REQUIRED, what="OLCAO model")
    path = Path(path)
    try:
        recipe = FeatureRecipe.from_dict(meta["features"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid feature recipe: {err}") from None
    if recipe.elements != list(meta["elements"]) or recipe.n_features != meta["n_inputs"]:
        raise ValueError(f"{path}: feature recipe disagrees with elements / n_inputs")
    if set(meta["exponents"]) != set(meta["elements"]):
        raise ValueError(f"{path}: exponent series missing for some elements")
    return LoadedOLCAOModel(module, meta, path)


def _as_predictor(model) -> tuple[object, dict]:
    """(callable(x, species) -> (mean, std), metadata dict) of any supported model."""
    if isinstance(model, (str, Path)):
        model = load_olcao_model(model)
    if isinstance(model, LoadedOLCAOModel):
        return model.module, model.metadata
    if isinstance(model, OLCAOModel):
        return model, json.loads(model.meta)
    raise TypeError(f"expected an OLCAOModel, LoadedOLCAOModel or path, got {type(model)}")


def predict_sites(model, atoms: Atoms, energy_model=None, *,
                  featurizer: SiteFeaturizer | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Predicted coefficients of every site of a structure.

    Parameters
    ----------
    model : OLCAOModel, LoadedOLCAOModel or path of a model file
    atoms : Atoms
        The structure (total charge from ``atoms.info["charge"]`` if set).
    energy_model : path or LoadedModel, optional
        Needed when the model's features take chi from an energy model.

    Returns
    -------
    mean, std : (N, D) Hartree, NaN beyond an element's series
    exponents : dict element -> alpha_i (bohr^-2)
    """
    module, meta = _as_predictor(model)
    recipe = FeatureRecipe.from_dict(meta["features"])
    if featurizer is None:
        featurizer = SiteFeaturizer(recipe, energy_model)
    expected = meta.get("energy_model_fingerprint")
    if (expected and featurizer.energy_fingerprint
            and featurizer.energy_fingerprint != expected):
        warnings.warn("the energy model differs from the one the OLCAO model was trained "
                      "with (metadata fingerprint mismatch); chi, q and phi may be off",
                      stacklevel=2)
    feats = featurizer(atoms)
    x = torch.as_tensor(feats.for_recipe(recipe), dtype=torch.float64)
    with torch.no_grad():
        mean, std = module(x, torch.as_tensor(feats.species, dtype=torch.int64))
    exponents = {e: np.asarray(a, dtype=float) for e, a in meta["exponents"].items()}
    return mean.numpy(), std.numpy(), exponents
