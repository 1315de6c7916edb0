"""The main job (`make demo`): NaCl clusters end to end with snapqeq.

    python examples/demo.py            # reduced CENT protocol, 11-21 min on 2 cores
    python examples/demo.py --full     # the paper-size protocol (make demo FULL=1)
    python examples/demo.py --small    # every stage, as small as possible (CI, tests)

Stages:

1. GFN2-xTB reference data for neutral and ionized NaCl clusters by the CENT paper's
   protocol (examples/nacl_clusters/make_data.py; tblite);
2. training of a CENT model and of its 4G variant with a short-range network
   (examples/nacl_clusters/run.py, snapqeq.training.trainer) and their test against the paper's
   RMSEs; parity plots, energy versus compression of the 64-atom cube; one round of
   active learning on the better model (validation RMSE): minima hopping and MD, the
   structures a committee disagrees on labelled with GFN2-xTB, retraining
   (examples/nacl_clusters/active_learning.py);
3. export of the retrained model as a TorchScript file (``snapqeq export``);
4. ASE: minima hopping (examples/minima_hopping/run.py) and NVE MD with VelocityVerlet;
5. LAMMPS: ``pair_style snapqeq`` plugin (``snapqeq build-lammps-plugin``), energy, forces
   and charges against ASE, and MD with examples/lammps/in.nacl_cluster serially and under
   ``mpirun -np 2``;
6. OLCAO potential-coefficient files (``snapqeq olcao predict``) from the Si example's model,
   trained on real OLCAO SCF results for Si (examples/si_olcao/data).

Everything goes to ``demo_output/`` (``--small``: ``demo_output/small/``, ``--full``:
``demo_output/full/``): ``report.md``, ``results.json``, the PNG plots, the model file
``nacl_model.pt`` and ``work/``. A stage is reused when its inputs are unchanged (stamps in
``work/stamps``); ``--redo STAGE`` recomputes one. The xTB results are cached in
``<out>/cache`` for all modes. A folder given with ``--out`` that holds files the demo did
not write is only written into after confirmation (or with ``--force``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the demo's sibling modules, also when imported by the tests

import demo_report  # noqa: E402
import demo_stages as stages  # noqa: E402

from snapqeq.datasets.clusters import GENERATOR_VERSION  # noqa: E402

DEFAULT_OUT = HERE.parent / "demo_output"
MARKER = ".snapqeq-demo"
MODELS = {"cent": False, "4g": True}  # name -> short-range network
LEGACY_FILES = ("bispectrum.png", "ta.data")  # outputs of the former bispectrum demo


@dataclass(frozen=True)
class Protocol:
    """The size of every stage in one demo mode."""

    name: str
    data_options: tuple[str, ...]  # examples/nacl_clusters/make_data.py options
    example_small: bool  # the NaCl example's small or full training configuration
    epochs: dict[str, int] | None  # per model (cent, 4g); None: the NaCl example's own
    mh_clusters: tuple[str, ...]  # minima hopping: cluster names (e.g. Na4Cl4+)
    mh_minima: int  # minima per cluster
    nve_steps: int  # ASE NVE, 1 fs steps
    lammps_steps: int  # LAMMPS NVE, 1 fs steps
    olcao_quick: bool  # the Si OLCAO example's quick mode
    active_learning: dict  # settings of the active-learning round (its Round), clusters aside
    description: str = ""


DEFAULT_RATIOS = ("0.88", "0.91", "0.94", "0.97", "1.0", "1.03", "1.06", "1.09", "1.12",
                  "1.15")
PROTOCOLS = {
    "small": Protocol(
        "small", ("--small", "--ratios", "0.9", "1.0", "1.1"), True, None, ("Na4Cl4",), 2,
        100, 100, True,
        {"hops": 1, "md_temperatures": (300.0,), "md_steps": 20, "members": 2,
         "member_epochs": 3, "budget": 3, "epochs": 3},
        "smallest run that exercises every stage (CI): 3 structures per (size, charge) "
        "for sizes 8-20, one 44- and one 64-atom cluster per charge"),
    "default": Protocol(
        "default", ("--n-train", "8", "--n-validation", "1", "--n-test", "3", "--ratios",
                    *DEFAULT_RATIOS), False, {"cent": 100, "4g": 300},
        ("Na4Cl4", "Na4Cl4+", "Na8Cl8"), 5,
        1000, 1000, True, {},
        "reduced CENT protocol: all sizes 8-80 and charges 0, +1, +2 with 8/1/3 "
        "structures per (size, charge) in train/validation/test; CENT up to 100 epochs, "
        "as many updates as the full protocol's 40; 4G 300 epochs"),
    "full": Protocol(
        "full", (), False, None, ("Na4Cl4", "Na4Cl4+", "Na8Cl8", "Na8Cl8+", "Na16Cl16"),
        10, 5000, 5000, False, {},
        "paper-size CENT protocol: 20/2/6 structures per (size, charge), sizes 8-80, "
        "charges 0, +1, +2 (627 structures)"),
}
STAGES = ("data", "train-cent", "train-4g", "evaluate", "active-learning", "export",
          "minima-hopping", "nve", "lammps", "olcao")


# ----------------------------------------------------------------------------- caching
def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(inputs: dict) -> str:
    """SHA-256 of a JSON rendering of a stage's inputs."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class StageRecord:
    """How a stage went in this run (seconds of wall time)."""

    title: str
    status: str  # computed | cached | failed | skipped
    seconds: float = 0.0
    compute_seconds: float = 0.0
    error: str = ""


@dataclass
class Pipeline:
    """Runs stages in order, reusing a stage's stored result when its inputs are unchanged."""

    root: Path
    redo: set[str] = field(default_factory=set)
    records: dict[str, StageRecord] = field(default_factory=dict)

    def stamp(self, key: str) -> Path:
        return self.root / "work" / "stamps" / f"{key}.json"

    def cached(self, key: str, digest: str) -> dict | None:
        """The stored result of stage ``key`` if its inputs and output files are unchanged."""
        path = self.stamp(key)
        if key in self.redo or "all" in self.redo or not path.is_file():
            return None
        stored = json.loads(path.read_text())
        if stored.get("inputs") != digest:
            return None
        if not all(Path(f).exists() for f in stored.get("outputs", [])):
            return None
        return stored

    def run(self, key: str, title: str, inputs: dict, fn: Callable[[], dict],
            outputs: tuple[Path, ...] = ()) -> dict | None:
        """Run (or reuse) one stage; a failure is recorded and returns None."""
        number = STAGES.index(key) + 1 if key in STAGES else 0
        print(f"\n{'=' * 88}\n[{number}/{len(STAGES)}] {title}\n{'=' * 88}", flush=True)
        digest = fingerprint(inputs)
        stored = self.cached(key, digest)
        start = time.perf_counter()
        if stored is not None:
            print(f"cached: inputs unchanged since the run of {stored['date']} "
                  f"({stored['seconds']:.1f} s); --redo {key} recomputes it")
            self.records[key] = StageRecord(title, "cached", time.perf_counter() - start,
                                            stored["seconds"])
            return stored["result"]
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - reported, the other stages go on
            traceback.print_exc()
            self.records[key] = StageRecord(title, "failed", time.perf_counter() - start,
                                            error=f"{type(err).__name__}: {err}")
            return None
        seconds = time.perf_counter() - start
        self.records[key] = StageRecord(title, "computed", seconds, seconds)
        self.stamp(key).parent.mkdir(parents=True, exist_ok=True)
        self.stamp(key).write_text(json.dumps(
            {"inputs": digest, "seconds": seconds, "date": time.strftime("%Y-%m-%d %H:%M"),
             "outputs": [str(p) for p in outputs], "result": result}, indent=1,
            default=float))
        print(f"done in {seconds:.1f} s")
        return result

    def skip(self, key: str, title: str, reason: str) -> None:
        """Record a stage that cannot run because an earlier one failed."""
        print(f"\n[{key}] skipped: {reason}")
        self.records[key] = StageRecord(title, "skipped", error=reason)


# ------------------------------------------------------------------------------ folders
def check_output_folder(out: Path, force: bool) -> None:
    """Refuse to write into a folder with files the demo did not write, unless confirmed.

    The default ``demo_output/``, a new or empty folder, and a folder of an earlier demo
    run (marker file) are fine.
    """
    owned = (out.resolve() == DEFAULT_OUT.resolve() or not out.exists()
             or not any(out.iterdir()) or (out / MARKER).exists())
    if owned or force:
        return
    question = f"{out} holds files that this demo did not write; write into it anyway?"
    if sys.stdin.isatty() and input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return
    sys.exit(f"refusing to write into {out}: choose another --out or pass --force")


def prepare_root(out: Path, protocol: Protocol) -> Path:
    """The folder of this mode (``out`` itself by default, ``out/<mode>`` otherwise)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by examples/demo.py\n")
    for name in LEGACY_FILES:
        (out / name).unlink(missing_ok=True)
    root = out if protocol.name == "default" else out / protocol.name
    (root / "work").mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------ pipeline
def training_config(name: str, work: Path, protocol: Protocol):
    """The NaCl example's training configuration of model ``name`` for this mode."""
    cfg = stages.NACL.config(name, work / "data", work, protocol.example_small, MODELS[name])
    if protocol.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=protocol.epochs[name])
    return cfg


def data_digests(data_dir: Path) -> dict[str, str]:
    return {name: file_digest(data_dir / f"{name}.extxyz") for name in stages.DATA_FILES}


def comparison_structure(data_dir: Path):
    """A 64-atom test cluster carrying charge +1 (the first one; else the first test)."""
    test = stages.read_structures(data_dir / "test.extxyz")
    return next((a for a in test if a.info.get("charge") == 1), test[0])


def run_pipeline(pipe: Pipeline, out: Path, root: Path, protocol: Protocol) -> dict:
    """All stages; returns everything the report shows."""
    work = root / "work"
    data_dir = work / "data"
    results: dict = {"mode": protocol.name, "protocol": dataclasses.asdict(protocol)}
    data_inputs = {"options": protocol.data_options, "generator": GENERATOR_VERSION}
    data_stale = pipe.cached("data", fingerprint(data_inputs)) is None
    results["data"] = pipe.run(
        "data", "GFN2-xTB reference data (tblite), CENT protocol", data_inputs,
        lambda: stages.reference_data(data_dir, out / "cache", protocol.data_options,
                                      force=data_stale),
        outputs=tuple(data_dir / f"{n}.extxyz" for n in stages.DATA_FILES))
    if results["data"] is None:
        return results
    digests = data_digests(data_dir)

    results["training"] = {}
    for name in MODELS:
        cfg = training_config(name, work, protocol)
        results["training"][name] = pipe.run(
            f"train-{name}", f"training the {name.upper()} model", {
                "config": dataclasses.asdict(cfg), "data": digests},
            lambda cfg=cfg: stages.train_model(cfg), outputs=(Path(cfg.output) / "model.pt",))
    trained = {n: Path(r["model"]) for n, r in results["training"].items() if r}
    if not trained:
        return results

    results["evaluation"] = pipe.run(
        "evaluate", "test against the CENT paper (ASE calculator)",
        {"models": {n: file_digest(p) for n, p in trained.items()}, "data": digests},
        lambda: stages.evaluate_models(trained, data_dir, root),
        outputs=(root / "compression.png", *(root / f"parity_{n}.png" for n in trained)))
    if results["evaluation"] is None:
        return results
    chosen = stages.choose_model(results["evaluation"]["models"])
    results["chosen_model"] = chosen
    settings = stages.AL.Round(clusters=protocol.mh_clusters, **protocol.active_learning)
    al_dir = work / "active_learning"
    results["active_learning"] = pipe.run(
        "active-learning", f"active learning: one round on the {chosen.upper()} model", {
            "model": file_digest(trained[chosen]), "data": digests,
            "settings": dataclasses.asdict(settings),
            "script": file_digest(Path(stages.AL.__file__))},
        lambda: stages.active_learning(trained[chosen].parent, al_dir, settings,
                                       out / "cache", data_dir, root, chosen),
        outputs=(al_dir / "retrained" / "model.pt",))
    final = (Path(results["active_learning"]["model"]).parent
             if results["active_learning"] else trained[chosen].parent)
    model = root / "nacl_model.pt"
    check = comparison_structure(data_dir)
    results["export"] = pipe.run(
        "export", f"export of the {chosen.upper()} model (TorchScript)",
        {"model": file_digest(final / "model.pt")},
        lambda: stages.export_model_file(final, model, check),
        outputs=(model,))
    if results["export"] is None:
        return results
    downstream_stages(pipe, results, model, work, root, protocol, check)
    return results


def downstream_stages(pipe: Pipeline, results: dict, model: Path, work: Path, root: Path,
                      protocol: Protocol, check) -> None:
    """Stages 4-6: ASE (minima hopping, NVE), LAMMPS, OLCAO."""
    model_digest = file_digest(model)
    mh_script = HERE / "minima_hopping" / "run.py"
    results["minima_hopping"] = pipe.run(
        "minima-hopping", "ASE: minima hopping", {
            "model": model_digest, "clusters": protocol.mh_clusters,
            "minima": protocol.mh_minima,
            "script": file_digest(mh_script) if mh_script.is_file() else None},
        lambda: stages.minima_hopping(model, work / "minima_hopping", protocol.mh_clusters,
                                      protocol.mh_minima, root / "minima_hopping.png"),
        outputs=(root / "minima_hopping.png",))
    results["nve"] = pipe.run(
        "nve", "ASE: NVE molecular dynamics (VelocityVerlet)",
        {"model": model_digest, "steps": protocol.nve_steps, "version": 3},
        lambda: stages.nve_run(model, protocol.nve_steps, root / "nve_ase.png",
                               work / "nve_final.extxyz"),
        outputs=(root / "nve_ase.png",))
    decks = {n: file_digest(HERE / "lammps" / n) for n in stages.LAMMPS_DECK_FILES}
    results["lammps"] = pipe.run(
        "lammps", "LAMMPS: pair_style snapqeq plugin, serial and mpirun -np 2",
        {"model": model_digest, "steps": protocol.lammps_steps, "decks": decks,
         "check": fingerprint({"positions": check.positions.tolist()}), "version": 3},
        lambda: stages.lammps_stage(model, check, protocol.lammps_steps, work / "lammps",
                                    root / "lammps_energy.png"),
        outputs=(root / "lammps_energy.png",))
    si_example = HERE / "si_olcao" / "run.py"
    results["olcao"] = pipe.run(
        "olcao", "OLCAO potential coefficients (Si model trained on real OLCAO SCF data)",
        {"quick": protocol.olcao_quick, "script": file_digest(si_example),
         "data": file_digest(HERE / "si_olcao" / "data" / "olcao_si.extxyz"), "version": 2},
        lambda: stages.olcao_stage(work, root / "olcao_si", protocol.olcao_quick),
        outputs=(root / "olcao_si" / "gs_scfV-fb.dat",))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"{p.name}: {p.description}" for p in PROTOCOLS.values()))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the paper-size protocol")
    mode.add_argument("--small", action="store_true", help="smallest run of every stage (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: %(default)s)")
    parser.add_argument("--redo", nargs="+", default=[], choices=(*STAGES, "all"),
                        metavar="STAGE", help=f"recompute these stages: {', '.join(STAGES)}"
                        " or all")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out folder without asking")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the demo; returns the results (also in ``results.json``). Exit status 1 (as
    ``SystemExit``) when a stage failed, after the report is written."""
    args = parse_args(argv)
    protocol = PROTOCOLS["full" if args.full else "small" if args.small else "default"]
    check_output_folder(args.out, args.force)
    root = prepare_root(args.out, protocol)
    print(f"snapqeq demo, {protocol.name} mode: {protocol.description}\noutput: {root}")
    start = time.perf_counter()
    pipe = Pipeline(root, set(args.redo))
    results = run_pipeline(pipe, args.out, root, protocol)
    for key in STAGES:
        if key not in pipe.records:
            pipe.skip(key, key, "an earlier stage failed")
    results["stages"] = {k: dataclasses.asdict(r) for k, r in pipe.records.items()}
    results["total_seconds"] = time.perf_counter() - start
    report = demo_report.write(root, results)
    print(f"\n{report.read_text()}\nreport: {report}")
    failed = [k for k, r in pipe.records.items() if r.status != "computed"
              and r.status != "cached"]
    if failed:
        raise SystemExit(f"demo: stages not completed: {', '.join(failed)} (see {report})")
    return results


if __name__ == "__main__":
    main()
