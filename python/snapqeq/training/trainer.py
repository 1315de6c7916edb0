"""Training of CENT models from extended-XYZ reference data.

``snapqeq train CONFIG.yaml`` and :func:`train` run the same code: descriptors (cached),
element reference energies by least squares, feature standardisation, Adam (optionally
followed by L-BFGS) on a weighted loss of per-atom energies, forces and reference charges,
early stopping on the validation loss, checkpoints with resume, learning-curve and parity
plots, the metrics table, and the exported TorchScript model.

With an ``olcao`` section the run then trains the per-site OLCAO potential-coefficient head
on the trained model's charges and potentials (:func:`snapqeq.training.olcao.train_olcao_run`)
and stores it in the same model file, so that one file gives energies, forces, charges and
OLCAO coefficients.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from snapqeq.analysis.metrics import Record, format_table, grouped_metrics
from snapqeq.descriptors.bispectrum import DICT_KEYS, Bispectrum
from snapqeq.io.model_file import load_model
from snapqeq.io.structures import DataKeys, check_reference_keys, read_structures
from snapqeq.models.cent import CENT
from snapqeq.models.committee import mean_records, spread_summary
from snapqeq.training.batch import batch_loss
from snapqeq.training.data import Sample, load_samples, split_samples, training_distances
from snapqeq.training.export import export_committee, export_model, merge_envelopes
from snapqeq.training.potential import predict
from snapqeq.units import BOHR, HARTREE


@dataclass
class TrainConfig:
    """Everything a training run needs (the YAML file has the same keys)."""

    data: str | dict  # one file (split by `split`) or {train:, validation:, test:} files
    output: str = "training_output"
    split: str = "info"
    seed: int = 0
    cache: str | None = None
    descriptor: dict = field(default_factory=lambda: {
        "twojmax": 6, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
        "weights": {"Na": 1.0, "Cl": 0.5}})
    widths: dict = field(default_factory=lambda: {"Na": 1.0 * BOHR, "Cl": 2.0 * BOHR})
    hardness: dict = field(default_factory=lambda: {"Na": 0.2 * HARTREE, "Cl": 0.1 * HARTREE})
    hidden: list = field(default_factory=lambda: [3, 3])
    learn_hardness: bool = False
    chi_scale: float = 5.0
    short_hidden: list | None = None
    epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-2
    lbfgs_steps: int = 0
    #: decoupled weight decay (AdamW) of the networks' weight matrices, per unit learning
    #: rate; biases, chi0 and the hardness are not decayed; 0: plain Adam
    weight_decay: float = 0.0
    patience: int = 30
    loss_weights: dict = field(default_factory=lambda: {"energy": 1.0, "forces": 0.0,
                                                         "charges": 0.0})
    keys: dict = field(default_factory=dict)
    format: str | None = None  # ase.io format of the data files; None: by content
    lr_schedule: str = "constant"  # or "cosine" (to lr * min_lr_factor over the epochs)
    min_lr_factor: float = 0.02
    resume: bool = False
    progress: bool = True
    olcao: dict | None = None  # OLCAO head, see train_olcao_head()
    committee: int = 1  # > 1: train that many members (seeds seed, seed+1, ...), one file
    #: committee members trained at once, each in its own process with one torch thread
    jobs: int = 1
    #: a checkpoint file or training directory (its best checkpoint) whose weights, feature
    #: scaling and reference energies start this run: fine-tuning on new data
    init_from: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig keys")
        validate_config(raw, str(path))
        return cls(**raw)


#: allowed keys of the nested sections of a training configuration
SECTION_KEYS = {
    "descriptor": DICT_KEYS,
    "loss_weights": ("energy", "forces", "charges"),
    "keys": tuple(DataKeys.__dataclass_fields__),
    "data": ("train", "validation", "test"),
}
LR_SCHEDULES = ("constant", "cosine")


def _check_keys(section: dict, allowed, where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def validate_config(raw: dict, source: str = "config") -> None:
    """Refuse unknown keys at the top level and in every nested section (ValueError naming
    the key, its section and the allowed keys), and a missing ``data``."""
    _check_keys(raw, tuple(TrainConfig.__dataclass_fields__), source)
    if "data" not in raw:
        raise ValueError(f"{source}: 'data' is required (a file, or train/validation/test "
                         "files)")
    for name, allowed in SECTION_KEYS.items():
        section = raw.get(name)
        if section is None or (name == "data" and isinstance(section, str)):
            continue
        if not isinstance(section, dict):
            raise ValueError(f"{source}: '{name}' must be a mapping with keys "
                             f"{', '.join(allowed)}")
        _check_keys(section, allowed, f"{source}: section '{name}'")
    if "descriptor" in raw:
        missing = [k for k in ("twojmax", "rcutfac", "radii", "weights")
                   if k not in raw["descriptor"]]
        if missing:
            raise ValueError(f"{source}: section 'descriptor' lacks {', '.join(missing)}")
    committee = raw.get("committee", 1)
    if not isinstance(committee, int) or isinstance(committee, bool) or committee < 1:
        raise ValueError(f"{source}: committee must be a whole number >= 1 (members), "
                         f"got {committee!r}")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"{source}: jobs must be a whole number >= 1 (processes), "
                         f"got {jobs!r}")
    if raw.get("lr_schedule", "constant") not in LR_SCHEDULES:
        raise ValueError(f"{source}: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {raw['lr_schedule']!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load(config: TrainConfig, descriptor: Bispectrum) -> dict[str, list[Sample]]:
    keys = DataKeys(**config.keys)
    need_energy = config.loss_weights.get("energy", 0.0) > 0

    def samples(path) -> list[Sample]:
        structures = read_structures(path, config.format)
        check_reference_keys(structures, keys, str(path), need_energy)
        return load_samples(structures, descriptor, keys, config.cache, config.progress)

    if isinstance(config.data, dict):
        return {name: samples(config.data[name]) if config.data.get(name) else []
                for name in ("train", "validation", "test")}
    return split_samples(samples(config.data), config.split, config.seed)


def fit_reference_energies(model: CENT, samples: list[Sample]) -> None:
    """Set the per-element reference energies E0 (eV) of ``model`` by least squares on
    what the model leaves of the reference energies (minimum norm).

    Fitting the residual of the initial model, rather than the raw energies, takes the
    QEq energy into account, and using every structure, charged ones included, fixes the
    E0 of elements whose count varies only between charge states (C10H2 / C10H3+).
    """
    rows, rhs = [], []
    with torch.no_grad():
        model.e0.zero_()
        for s in samples:
            if s.energy is None:
                continue
            rows.append(np.bincount(s.species.numpy(), minlength=model.n_elements))
            rhs.append(s.energy - float(predict(model, s, forces=False)["energy"]))
        if rows:
            e0, *_ = np.linalg.lstsq(np.array(rows, float), np.array(rhs), rcond=None)
            model.e0.copy_(torch.as_tensor(e0, dtype=model.e0.dtype))


def evaluate(model: CENT, samples: list[Sample], forces: bool = True) -> list[Record]:
    """Predictions for every structure as metric records."""
    records = []
    for s in samples:
        out = predict(model, s, forces=forces and s.forces is not None, create_graph=False)
        records.append(Record(
            n_atoms=s.n_atoms, total_charge=s.total_charge, split=s.split,
            energy=float(out["energy"].detach()), energy_ref=s.energy,
            forces=out["forces"].detach().numpy() if "forces" in out else None,
            forces_ref=None if s.forces is None else s.forces.numpy(),
            charges=out["charges"].detach().numpy(),
            charges_ref=None if s.ref_charges is None else s.ref_charges.numpy()))
    return records


#: structures per batched evaluation of the validation loss (memory, not results)
_EVAL_BATCH = 64


def _mean_loss(model, samples, w) -> float:
    if not samples:
        return float("nan")
    total = sum(float(batch_loss(model, samples[k:k + _EVAL_BATCH], w, False).detach())
                for k in range(0, len(samples), _EVAL_BATCH))
    return total / len(samples)


@dataclass
class TrainResult:
    model: CENT
    model_path: Path
    history: list[dict]
    metrics: dict
    seconds: float
    structures_per_second: float


def new_model(config: TrainConfig, descriptor: Bispectrum) -> CENT:
    """The untrained CENT model of ``config`` (networks, widths, hardness; E0 zero)."""
    elements = list(descriptor.elements)
    for name in ("widths", "hardness"):
        missing = set(elements) - set(getattr(config, name))
        if missing:
            raise ValueError(f"config '{name}' lacks elements {sorted(missing)}")
    return CENT(len(elements), descriptor.n_components, list(config.hidden),
                [config.widths[e] for e in elements], [config.hardness[e] for e in elements],
                [0.0] * len(elements), learn_hardness=config.learn_hardness,
                chi_scale=config.chi_scale, short_hidden=config.short_hidden)


def build_model(config: TrainConfig, descriptor: Bispectrum, train: list[Sample]) -> CENT:
    """:func:`new_model` with feature scaling and reference energies from ``train``, or,
    with ``config.init_from``, with everything from that checkpoint."""
    model = new_model(config, descriptor)
    if config.init_from is not None:
        model.load_state_dict(_checkpoint_state(config.init_from))
        return model
    b = torch.cat([s.b for s in train])
    sp = torch.cat([s.species for s in train])
    model.set_feature_scaling(b, sp)
    fit_reference_energies(model, train)
    return model


def _checkpoint_state(path: str | Path, which: str = "best") -> dict:
    """The model weights of a checkpoint file or of a training directory's checkpoint."""
    path = Path(path)
    ckpt = path / f"checkpoint_{which}.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ValueError(f"no checkpoint {ckpt}; train first")
    return torch.load(ckpt, weights_only=False)["model"]


def checkpoint_model(training_dir: str | Path, which: str = "best"
                     ) -> tuple[CENT, Bispectrum, TrainConfig]:
    """The model of a training run's checkpoint (``best`` or ``last``), its descriptor and
    the run's configuration."""
    training_dir = Path(training_dir)
    config = TrainConfig.from_yaml(training_dir / "config.yaml")
    descriptor = Bispectrum(**config.descriptor)
    model = new_model(config, descriptor)
    model.load_state_dict(_checkpoint_state(training_dir, which))
    return model, descriptor, config


def export_committee_of_runs(training_dirs: list[str | Path], out: str | Path,
                             overwrite: bool = False) -> Path:
    """One committee model file of the best checkpoints of finished training runs (same
    descriptor and networks, e.g. other seeds), with the union of their training
    envelopes (each run's ``model.pt``)."""
    loaded = [checkpoint_model(d) for d in training_dirs]
    descriptor = loaded[0][1]
    min_distances, envelope = merge_envelopes(
        [load_model(Path(d) / "model.pt").metadata for d in training_dirs])
    return export_committee([m for m, _, _ in loaded], list(descriptor.elements),
                            descriptor.to_dict(), out, overwrite=overwrite,
                            min_distances=min_distances, envelope=envelope)


def export_checkpoint(training_dir: str | Path, out: str | Path, overwrite: bool = False,
                      which: str = "best") -> Path:
    """Write the model file of a training run's checkpoint (``best`` or ``last``)."""
    model, descriptor, config = checkpoint_model(training_dir, which)
    elements = list(descriptor.elements)
    train_file = config.data.get("train") if isinstance(config.data, dict) else config.data
    shortest = (training_distances(read_structures(train_file, config.format), descriptor)
                if train_file and Path(train_file).is_file() else None)
    return export_model(model, elements, descriptor.to_dict(), out, overwrite,
                        min_distances=shortest)


#: Medium-range bispectrum of the OLCAO head unless the config says otherwise: the model's
#: descriptor with a 5/3 larger cutoff and twojmax 4 (a second shell at modest cost).
MEDIUM_RANGE = {"rcutfac_scale": 5.0 / 3.0, "twojmax": 4}


def train_olcao_head(config: TrainConfig, model_path: Path, out: Path):
    """Train the OLCAO head of an energy model from the ``olcao`` section of ``config``.

    The section has the keys of :func:`snapqeq.training.olcao.train_olcao_run` (network,
    mixture and optimiser settings, ``data`` / ``validation`` / ``test`` files with
    ``potential_coefficients`` per site; default: the energy model's data files, where one
    file is split by structure with ``validation_fraction``) and
    optionally ``features`` (a full recipe) or ``medium`` (parameters overriding the
    model's descriptor for the medium-range block, e.g. ``{rcutfac: 1.6, twojmax: 4}``, or
    null for none).  The local block is the model's own descriptor and the long-range block
    its QEq charges q_i (e) and potentials phi_i (eV/e).
    """
    from snapqeq.models.site_features import FeatureRecipe
    from snapqeq.training.olcao import train_olcao_run

    raw = dict(config.olcao)
    if "features" not in raw:
        local = Bispectrum(**config.descriptor).to_dict()
        medium = raw.pop("medium") if "medium" in raw else {
            "rcutfac": local["rcutfac"] * MEDIUM_RANGE["rcutfac_scale"],
            "twojmax": min(local["twojmax"], MEDIUM_RANGE["twojmax"])}
        raw["features"] = FeatureRecipe(
            local=local, medium=None if medium is None else dict(local, **medium),
            chi_source="energy_model").to_dict()
    if "data" not in raw:
        files = config.data if isinstance(config.data, dict) else {"train": config.data}
        raw["data"] = files["train"]
        raw.update({k: files[k] for k in ("validation", "test") if files.get(k)})
    raw.setdefault("progress", config.progress)
    raw.setdefault("seed", config.seed)
    return train_olcao_run(raw, out, energy_model=model_path)


def _optimizer(model: CENT, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; with ``weight_decay`` > 0, AdamW that decays
    only the weight matrices of the chi and short-range networks."""
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {config.weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if config.weight_decay == 0:
        return torch.optim.Adam(params, lr=config.lr)
    decayed = [p for name, p in model.named_parameters() if p.requires_grad
               and name.startswith(("chi_net.", "short_net.")) and name.endswith(".weight")]
    chosen = {id(p) for p in decayed}
    rest = [p for p in params if id(p) not in chosen]
    return torch.optim.AdamW([{"params": decayed, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr)


def train(config: TrainConfig) -> TrainResult:
    """Train, checkpoint, plot, evaluate and export; returns the trained model.

    With ``committee > 1`` the members are trained by
    :func:`train_committee` and exported as one model file.
    """
    if config.committee > 1:
        return train_committee(config)
    seed_everything(config.seed)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    descriptor = Bispectrum(**config.descriptor)
    sets = _load(config, descriptor)
    if not sets["train"]:
        raise ValueError("no training structures after the split")
    model = build_model(config, descriptor, sets["train"])
    w = dict(config.loss_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(model, config)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, max(config.epochs, 1), eta_min=config.lr * config.min_lr_factor)
        if config.lr_schedule == "cosine" else None)
    ckpt_last, ckpt_best = out / "checkpoint_last.pt", out / "checkpoint_best.pt"
    history: list[dict] = []
    start_epoch, best, bad_epochs = 0, float("inf"), 0
    if config.resume and ckpt_last.exists():
        state = torch.load(ckpt_last, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if schedule is not None and "schedule" in state:
            schedule.load_state_dict(state["schedule"])
        history, start_epoch = state["history"], state["epoch"] + 1
        best, bad_epochs = state["best"], state["bad_epochs"]
        torch.set_rng_state(state["rng"])
    t0 = time.perf_counter()
    n_seen = 0
    train_set = sets["train"]
    bar = tqdm(range(start_epoch, config.epochs), desc="training", unit="epoch",
               disable=not config.progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train_set)).tolist()
        running = 0.0
        for k in range(0, len(order), config.batch_size):
            batch = [train_set[i] for i in order[k:k + config.batch_size]]
            opt.zero_grad()
            loss = batch_loss(model, batch, w, create_graph=True) / len(batch)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * len(batch)
            n_seen += len(batch)
        if schedule is not None:
            schedule.step()
        model.eval()
        val = _mean_loss(model, sets["validation"], w)
        row = {"epoch": epoch, "train_loss": running / len(train_set), "validation_loss": val}
        history.append(row)
        monitor = val if np.isfinite(val) else row["train_loss"]
        if monitor < best:
            best, bad_epochs = monitor, 0
            torch.save({"model": model.state_dict()}, ckpt_best)
        else:
            bad_epochs += 1
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "history": history, "epoch": epoch, "best": best,
                    "bad_epochs": bad_epochs, "rng": torch.get_rng_state(),
                    "schedule": None if schedule is None else schedule.state_dict()}, ckpt_last)
        bar.set_postfix(train=f"{row['train_loss']:.3g}", val=f"{val:.3g}")
        if bad_epochs >= config.patience:
            break
    train_seconds = time.perf_counter() - t0
    if ckpt_best.exists():
        model.load_state_dict(torch.load(ckpt_best, weights_only=False)["model"])
    if config.lbfgs_steps > 0:
        lbfgs = torch.optim.LBFGS(params, max_iter=config.lbfgs_steps,
                                  line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            total = 0.0
            for k in range(0, len(train_set), _EVAL_BATCH):  # one graph at a time
                loss = batch_loss(model, train_set[k:k + _EVAL_BATCH], w,
                                  create_graph=True) / len(train_set)
                loss.backward()
                total += float(loss.detach())
            return torch.tensor(total, dtype=torch.float64)

        lbfgs.step(closure)
    model.eval()
    records = {name: evaluate(model, samples) for name, samples in sets.items() if samples}
    metrics = {name: {k: m.as_dict() for k, m in grouped_metrics(rec).items()}
               for name, rec in records.items()}
    table = "\n\n".join(f"[{name}]\n{format_table(grouped_metrics(rec))}"
                        for name, rec in records.items())
    (out / "metrics.txt").write_text(table + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "history.json").write_text(json.dumps(history))
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    from snapqeq.analysis.plots import learning_curve, parity_plot

    learning_curve(history, out / "learning_curve.png", config.loss_weights)
    parity_plot(records, out / "parity.png")
    shortest = training_distances(train_set, descriptor)
    model_path = export_model(model, list(descriptor.elements), descriptor.to_dict(),
                              out / "model.pt", overwrite=True, min_distances=shortest,
                              training_samples=train_set)
    if config.olcao is not None:
        head = train_olcao_head(config, model_path, out / "olcao")
        export_model(model, list(descriptor.elements), descriptor.to_dict(), model_path,
                     overwrite=True, olcao=head, min_distances=shortest,
                     training_samples=train_set)
        metrics["olcao"] = head.summary
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return TrainResult(model, model_path, history, metrics, train_seconds,
                       n_seen / train_seconds if train_seconds > 0 else float("nan"))


def train_committee(config: TrainConfig) -> TrainResult:
    """Train ``config.committee`` members and write them into one model file.

    Member k is :func:`snapqeq.training.trainer.train` of the same configuration with seed
    ``config.seed + k`` in ``OUTPUT/member_k`` (its own initial weights, batch order and
    reference-energy fit; with ``split: random`` of one data file also its own random
    train/validation/test split, as RuNNer committees do; with ``split: info`` / ``size``
    or separate files every member sees the same sets).  Then ``OUTPUT/model.pt`` holds
    all members (:func:`snapqeq.training.export.export_committee`) with the union of the members'
    training envelopes, and ``OUTPUT/metrics.txt`` / ``metrics.json`` give, on the sets of
    seed ``config.seed``, the metrics of the committee-mean prediction (the training-path
    evaluation of :func:`snapqeq.training.trainer.evaluate`, forces by autograd) and the mean and
    largest energy std (meV/atom) and the mean of the largest per-atom force std
    (meV/Angstrom) per structure.  With ``split: random`` the test structures of member 0
    may be training structures of other members: use ``snapqeq test`` on held-out data.
    ``resume`` continues every member from its own ``checkpoint_last.pt``.  With
    ``jobs > 1`` that many members train at once, each in a process of its own with one
    torch thread (same results as one after the other; with a ``cache`` the descriptors
    are computed once, before the members start); the processes are spawned, so a script that calls
    this needs the ``if __name__ == "__main__":`` guard.

    Returns a :class:`snapqeq.training.trainer.TrainResult` whose ``model`` is member 0, whose
    ``model_path`` is the committee file, whose ``history`` has the rows of every member
    (key ``member``) and whose ``seconds`` sum the members' training times.
    """
    n = int(config.committee)
    if n < 2:
        raise ValueError(f"train_committee needs committee >= 2, got {n}")
    if config.olcao is not None:
        raise ValueError("a committee with an OLCAO head is not supported: train the "
                         "OLCAO head on a single model (committee: 1)")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(config.jobs, int) or config.jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (processes), got {config.jobs!r}")
    jobs = min(config.jobs, n)
    members = [dataclasses.replace(config, committee=1, seed=config.seed + k, jobs=1,
                                   output=str(out / f"member_{k}"),
                                   progress=config.progress and jobs == 1)
               for k in range(n)]
    descriptor = Bispectrum(**config.descriptor)
    sets = None
    if jobs == 1:
        results = []
        for k, member in enumerate(members):
            if config.progress:
                print(f"committee member {k + 1}/{n} (seed {member.seed})", flush=True)
            results.append(train(member))
    else:
        if config.cache is not None:
            # fill the cache once, here, so that the members read it instead of computing
            # (and writing) the same files at the same time
            sets = _load(dataclasses.replace(config, committee=1), descriptor)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = list(tqdm(pool.map(train, members), total=n, unit="member",
                                desc=f"committee ({jobs} processes)",
                                disable=not config.progress))
    elements = list(descriptor.elements)
    min_distances, envelope = merge_envelopes(
        [load_model(r.model_path).metadata for r in results])
    models = [r.model for r in results]
    model_path = export_committee(models, elements, descriptor.to_dict(), out / "model.pt",
                                  overwrite=True, min_distances=min_distances,
                                  envelope=envelope)

    if sets is None:
        sets = _load(dataclasses.replace(config, committee=1, progress=False), descriptor)
    metrics, tables, mean = {}, [], {}
    for name, samples in sets.items():
        if not samples:
            continue
        records, spread = mean_records([evaluate(m, samples) for m in models])
        mean[name] = records
        groups = grouped_metrics(records)
        metrics[name] = {k: m.as_dict() for k, m in groups.items()}
        metrics[name]["committee_spread"] = spread_summary(spread)
        s = metrics[name]["committee_spread"]
        force = ("-" if s["force_std_max_mean_mev"] is None
                 else f"{s['force_std_max_mean_mev']:.2f} meV/A")
        tables.append(f"[{name}] committee mean of {n} members\n{format_table(groups)}\n"
                      f"energy std {s['energy_std_mean_mev']:.3f} meV/atom on average, "
                      f"{s['energy_std_max_mev']:.3f} at most; largest per-atom force std "
                      f"{force} on average")
    metrics["members"] = [r.metrics for r in results]
    (out / "metrics.txt").write_text("\n\n".join(tables) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    history = [{"member": k, **row} for k, r in enumerate(results) for row in r.history]
    (out / "history.json").write_text(json.dumps(history))
    from snapqeq.analysis.plots import learning_curve, parity_plot

    learning_curve(history, out / "learning_curve.png", config.loss_weights)
    parity_plot(mean, out / "parity.png")
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(config),
                                                    sort_keys=False))
    seconds = sum(r.seconds for r in results)
    seen = sum(r.seconds * r.structures_per_second for r in results)
    return TrainResult(models[0], model_path, history, metrics, seconds,
                       seen / seconds if seconds > 0 else float("nan"))
