"""Active learning for the NaCl clusters: explore, select by committee disagreement, label
with GFN2-xTB, retrain.

    python examples/nacl_clusters/active_learning.py --training DIR --out DIR
                                                     [--clusters Na4Cl4 Na4Cl4+ Na8Cl8]

``--training`` is a finished training run of the NaCl example (``run.py`` / the demo:
``config.yaml``, checkpoints, ``model.pt``). One round:

1. **committee**: the trained model and ``members - 1`` more, trained by the same
   configuration with other seeds, in one committee model file;
2. **exploration** with the trained model, as a user's runs would go: minima hopping of the
   clusters (examples/minima_hopping/run.py) and Langevin MD of the 64-atom rock-salt cube
   at several temperatures; the candidates are the distinct minima and every ``stride``-th
   MD frame;
3. **selection**: each candidate's committee disagreement (largest per-atom force standard
   deviation, eV/Å); all minima (the minima-hopping check ranks them) and the most
   uncertain MD frames, at most ``budget`` per cluster (``md_budget`` per temperature of
   the cube), no two within ``min_distance`` Å of each other in the sorted-distance
   fingerprint;
4. **labelling** with GFN2-xTB (tblite, cached), appended to the training set;
5. **retraining**: the trained model fine-tuned on the augmented set (``init_from``),
   exported as ``<out>/model.pt``.

Writes under ``--out``: ``committee/`` (members and ``model.pt``), ``exploration/``,
``selected.extxyz`` (the labelled new structures), ``train.extxyz`` (augmented set),
``retrained/`` (the new training run) and ``round.json`` (counts, disagreement before and
after, timings). Units: Å, eV, e, K, fs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from tqdm.auto import tqdm

from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.datasets.clusters import nacl_cube
from snapqeq.datasets.xtb import label_structures, write_extxyz
from snapqeq.io.structures import read_structures
from snapqeq.training.trainer import TrainConfig, export_committee_of_runs, train

HERE = Path(__file__).resolve().parent
MH_SCRIPT = HERE.parent / "minima_hopping" / "run.py"


@dataclasses.dataclass(frozen=True)
class Round:
    """The settings of one active-learning round."""

    clusters: tuple[str, ...] = ("Na4Cl4", "Na4Cl4+", "Na8Cl8")
    hops: int = 10  # minima-hopping steps per cluster
    seed: int = 1  # exploration seed (the demo's own minima-hopping check uses seed 0)
    md_temperatures: tuple[float, ...] = (300.0, 600.0, 900.0)  # K, 64-atom cube
    md_steps: int = 300  # per temperature, 2 fs steps
    stride: int = 10  # every this many MD steps a candidate frame
    members: int = 3  # committee size for the selection
    member_epochs: int | None = 60  # epochs of the extra members (None: as the model)
    budget: int = 60  # most uncertain minima-hopping MD frames per cluster
    md_budget: int = 10  # most uncertain frames per MD temperature (64 atoms: costly labels)
    min_distance: float = 0.1  # Å, fingerprint distance between two selected frames
    epochs: int = 80  # fine-tuning epochs on the augmented set
    lr: float = 3e-3  # fine-tuning learning rate (cosine decay)


def _minima_hopping_example():
    spec = importlib.util.spec_from_file_location("minima_hopping_example", MH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("minima_hopping_example", module)
    spec.loader.exec_module(module)
    return module


MH = _minima_hopping_example()


# --------------------------------------------------------------------------- committee
def committee(training_dir: Path, out: Path, settings: Round) -> Path:
    """A committee file of the run in ``training_dir`` (member 0) and ``members - 1``
    runs of its configuration with seeds ``seed + 1, ...`` in ``out/member_k``."""
    config = TrainConfig.from_yaml(training_dir / "config.yaml")
    runs = [training_dir]
    for k in range(1, settings.members):
        member = dataclasses.replace(
            config, seed=config.seed + k, output=str(out / f"member_{k}"), resume=False,
            epochs=settings.member_epochs or config.epochs)
        print(f"committee member {k + 1}/{settings.members} (seed {member.seed})", flush=True)
        train(member)
        runs.append(Path(member.output))
    return export_committee_of_runs(runs, out / "model.pt", overwrite=True)


# ------------------------------------------------------------------------- exploration
def explore_minima_hopping(model: Path, out: Path, settings: Round) -> list[Atoms]:
    """Minima hopping of every cluster with ``model``; the distinct minima and every
    ``stride``-th MD frame, each with ``info`` cluster, charge and source."""
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for name in settings.clusters:
        summary = MH.hop(name, str(model), out, settings.hops, settings.seed, reference=False)
        charge = summary["total_charge"]
        found = [(a, "minimum") for a in read(out / f"minima_{name}.extxyz", ":")]
        for md in sorted((out / name).glob("md*.traj")):
            found += [(a, "minima-hopping MD") for a in read(md, f"::{settings.stride}")]
        frames += [_candidate(a, name, charge, source) for a, source in found]
    return frames


def explore_md(model: Path, settings: Round) -> list[Atoms]:
    """Langevin MD (2 fs, friction 0.02/fs) of the 64-atom cube at every temperature with
    ``model``; every ``stride``-th frame. A run that leaves the model's domain ends there."""
    frames = []
    for temperature in settings.md_temperatures:
        atoms = nacl_cube(4)
        atoms.calc = SnapQEqCalculator(model, total_charge=0.0)
        rng = np.random.default_rng(int(temperature))
        thermalize_momenta(atoms, temperature, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02,
                       rng=rng)
        name = f"Na32Cl32 MD {temperature:g} K"
        with tqdm(total=settings.md_steps, desc=name, unit="step") as bar:
            for _ in range(settings.md_steps // settings.stride):
                try:
                    dyn.run(settings.stride)
                except ValueError as err:  # the calculator's guard: outside the domain
                    print(f"{name}: stopped, {err}")
                    break
                frames.append(_candidate(atoms, name, 0, "MD"))
                bar.update(settings.stride)
    return frames


def _candidate(atoms: Atoms, cluster: str, charge: int, source: str) -> Atoms:
    clean = Atoms(atoms.numbers, atoms.positions)
    clean.info.update(generator="active-learning", cluster=cluster, source=source,
                      split="train", charge=charge)
    return clean


# --------------------------------------------------------------------------- selection
def disagreement(committee_model: Path, frames: list[Atoms]) -> np.ndarray:
    """Largest per-atom committee force standard deviation (eV/Å) of every frame."""
    calc = SnapQEqCalculator(committee_model)
    spread = []
    for atoms in tqdm(frames, desc="committee disagreement", unit="frame"):
        work = atoms.copy()
        work.calc = calc
        try:
            spread.append(float(np.max(calc.get_property("forces_std", work))))
        except ValueError:  # outside the training envelope: as uncertain as it gets
            spread.append(np.inf)
    return np.array(spread)


def same_structure(a: Atoms, b: Atoms, tolerance: float) -> bool:
    """Whether two clusters have the same composition and sorted interatomic distances
    within ``tolerance`` (Å)."""
    if len(a) != len(b) or sorted(a.numbers) != sorted(b.numbers):
        return False
    return MH.fingerprint_distance(a, b) < tolerance


def select(frames: list[Atoms], spread: np.ndarray, settings: Round) -> list[int]:
    """Indices of the frames to label: every minimum, then per source (cluster or MD
    temperature) the most uncertain frames, at most ``budget`` (``md_budget``), none the
    same structure
    (:func:`same_structure`) as one chosen before."""
    chosen = [i for i, a in enumerate(frames) if a.info["source"] == "minimum"]
    per_source: dict[str, int] = {}
    for i in np.argsort(-spread, kind="stable"):
        a = frames[i]
        budget = settings.md_budget if a.info["source"] == "MD" else settings.budget
        if a.info["source"] == "minimum" or per_source.get(a.info["cluster"], 0) >= budget:
            continue
        if any(same_structure(a, frames[j], settings.min_distance) for j in chosen):
            continue
        chosen.append(int(i))
        per_source[a.info["cluster"]] = per_source.get(a.info["cluster"], 0) + 1
    return chosen


# ------------------------------------------------------------------------------- round
def run_round(training_dir: Path, out: Path, settings: Round = Round(),
              cache: Path | None = None) -> dict:
    """One active-learning round on the training run ``training_dir`` (see the module
    docstring); returns the summary also written to ``out/round.json``."""
    training_dir, out = Path(training_dir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.from_yaml(training_dir / "config.yaml")
    model = training_dir / "model.pt"
    times = {}
    start = time.perf_counter()
    committee_file = committee(training_dir, out / "committee", settings)
    times["committee_s"] = time.perf_counter() - start

    start = time.perf_counter()
    frames = explore_minima_hopping(model, out / "exploration", settings)
    frames += explore_md(model, settings)
    times["exploration_s"] = time.perf_counter() - start

    start = time.perf_counter()
    spread = disagreement(committee_file, frames)
    chosen = select(frames, spread, settings)
    times["selection_s"] = time.perf_counter() - start

    start = time.perf_counter()
    picked = [frames[i] for i in chosen]
    labelled = label_structures(picked, [a.info["charge"] for a in picked], cache=cache,
                                desc="GFN2-xTB (active learning)").structures
    write_extxyz(out / "selected.extxyz", labelled)
    files = config.data if isinstance(config.data, dict) else {"train": config.data}
    augmented = read_structures(files["train"], config.format) + labelled
    write_extxyz(out / "train.extxyz", augmented)
    times["labelling_s"] = time.perf_counter() - start

    start = time.perf_counter()
    retrained = dataclasses.replace(
        config, data={**files, "train": str(out / "train.extxyz")},
        output=str(out / "retrained"), init_from=str(training_dir), epochs=settings.epochs,
        lr=settings.lr, lr_schedule="cosine", resume=False, format=None)
    result = train(retrained)
    times["retraining_s"] = time.perf_counter() - start

    finite = spread[np.isfinite(spread)]
    summary = {
        "settings": dataclasses.asdict(settings),
        "candidates": len(frames),
        "candidates_by_source": _count(frames),
        "outside_envelope": int(np.sum(~np.isfinite(spread))),
        "selected": len(chosen), "labelled": len(labelled),
        "selected_by_source": _count(picked),
        "force_std_candidates_median_eV_A": float(np.median(finite)) if finite.size else None,
        "force_std_selected_median_eV_A": float(np.median(spread[chosen][np.isfinite(
            spread[chosen])])) if chosen else None,
        "train_structures_before": len(augmented) - len(labelled),
        "train_structures_after": len(augmented),
        "model": str(result.model_path), "committee": str(committee_file), **times}
    (out / "round.json").write_text(json.dumps(summary, indent=1))
    return summary


def _count(frames: list[Atoms]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in frames:
        key = f"{a.info['cluster']}: {a.info['source']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training", type=Path, required=True,
                        help="a finished training run (config.yaml, checkpoints, model.pt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clusters", nargs="+", default=list(Round.clusters))
    parser.add_argument("--hops", type=int, default=Round.hops)
    parser.add_argument("--epochs", type=int, default=Round.epochs)
    parser.add_argument("--member-epochs", type=int, default=Round.member_epochs)
    parser.add_argument("--cache", type=Path, default=None, help="GFN2-xTB cache folder")
    args = parser.parse_args(argv)
    if (args.out / "round.json").exists():
        parser.error(f"{args.out} holds a finished round; choose another --out")
    settings = Round(clusters=tuple(args.clusters), hops=args.hops, epochs=args.epochs,
                     member_epochs=args.member_epochs)
    summary = run_round(args.training, args.out, settings, args.cache)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
