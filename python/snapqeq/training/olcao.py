"""Training of the OLCAO potential-coefficient head (:class:`snapqeq.models.olcao_head.OLCAOModel`).

:func:`train_olcao_model` fits it to structures carrying per-site targets in
``atoms.arrays["potential_coefficients"]`` (Hartree, see :mod:`snapqeq.io.olcao`) by
minimising the mixture negative log-likelihood of the standardised targets (Adam on
mini-batches of sites, early stopping on the validation NLL, then a post-hoc recalibration
of the predicted standard deviations on the validation sites).  :func:`train_olcao_run` is
a complete run from a config mapping (``snapqeq olcao train`` and the ``olcao`` section of
``snapqeq train``).
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

from snapqeq.io.olcao import TARGETS_KEY, get_site_targets
from snapqeq.models.mdn import ONE_SIGMA_COVERAGE
from snapqeq.models.olcao_head import OUTPUT_BASES, OLCAOModel, gaussian_overlap
from snapqeq.models.site_features import FeatureRecipe, SiteFeatures, SiteFeaturizer, species_index

__all__ = [
    "OLCAOTrainConfig",
    "evaluate_olcao_model",
    "site_targets",
    "train_olcao_model",
    "train_olcao_run",
]


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
