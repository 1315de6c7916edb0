"""Training throughput: the batched path (snapqeq.training.batch) against the one-structure path.

Both paths compute the same loss and gradients (tests/test_batch.py checks 1e-10); this
times one Adam epoch (loss with forces, create_graph, backward, step) over the training
structures with each, in one process, after one warm-up epoch, and prints structures per
second and the ratio. Data sets:

- ``nacl``: GFN2-xTB NaCl clusters of 8-20 atoms (examples/nacl_small/train.extxyz), the
  NaCl example's 4G recipe (2J = 6, 3-3 chi networks, 8-8 short-range network);
- ``carbon``: the 4G-HDNNP carbon chain (examples/ko2021_carbon_chain, 2J = 8, 25-25
  networks), 12-13 atoms per structure.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py [--batch-sizes 4 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.io.structures import DataKeys, read_structures
from snapqeq.training.batch import batch_loss, structure_loss
from snapqeq.training.data import load_samples
from snapqeq.training.trainer import TrainConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
WEIGHTS = {"energy": 1.0, "forces": 0.02, "charges": 0.1}


def _example(folder: str):
    """The ``run.py`` module of an example folder (they share the module name)."""
    spec = importlib.util.spec_from_file_location(f"{folder}_run",
                                                  ROOT / "examples" / folder / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nacl_config() -> tuple[TrainConfig, Path]:
    cfg = TrainConfig(data="", descriptor=_example("nacl_clusters").DESCRIPTOR, hidden=[3, 3],
                      short_hidden=[8, 8], chi_scale=10.0, loss_weights=WEIGHTS, progress=False)
    return cfg, ROOT / "examples" / "nacl_small" / "train.extxyz"


def carbon_config() -> tuple[TrainConfig, Path]:
    from ko2021_benchmark import COMMON_RECIPE

    raw = dict(COMMON_RECIPE, **_example("ko2021_carbon_chain").SYSTEM["config"])
    raw.pop("batch_size")
    return (TrainConfig(data="", progress=False, **raw),
            ROOT / "examples" / "ko2021_carbon_chain" / "data" / "input.data")


def epoch_seconds(model, samples, weights, batch_size: int, batched: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    start = time.perf_counter()
    for k in range(0, len(samples), batch_size):
        chunk = samples[k:k + batch_size]
        opt.zero_grad()
        loss = (batch_loss(model, chunk, weights, create_graph=True) if batched else
                sum(structure_loss(model, s, weights, create_graph=True) for s in chunk))
        (loss / len(chunk)).backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--systems", nargs="+", default=["nacl", "carbon"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| data | structures | atoms/structure | batch | one-by-one (struct/s) "
          "| batched (struct/s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.systems:
        cfg, path = {"nacl": nacl_config, "carbon": carbon_config}[name]()
        descriptor = Bispectrum(**cfg.descriptor)
        samples = load_samples(read_structures(path), descriptor, DataKeys(), progress=False)
        torch.manual_seed(0)
        model = build_model(cfg, descriptor, samples)
        sizes = sorted({s.n_atoms for s in samples})
        for bs in args.batch_sizes:
            rates = []
            for batched in (False, True):
                epoch_seconds(model, samples, cfg.loss_weights, bs, batched)  # warm-up
                rates.append(len(samples) / epoch_seconds(model, samples, cfg.loss_weights,
                                                          bs, batched))
            print(f"| {name} | {len(samples)} | {sizes[0]}-{sizes[-1]} | {bs} "
                  f"| {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
