"""Benchmark: training throughput and data wait, decoded-volume cache vs reading NIfTI every epoch.

Writes a small simulated cohort of template-space images (the simulator's own
subjects with planted atrophy, as ``tests/conftest.make_preprocessed_cohort``
does, without registration) at 2 mm, then trains ``--model`` for a few epochs
in two ways, alternating epoch by epoch, with CPU memory kept for reuse as the
training runner does (:func:`~adheat_app.memory.reuse_cpu_memory`):
reading batches from :func:`adheat_app.volumes.load_channels` (float16 memmap,
as :mod:`adheat_app.training.loop` does) and decoding the ``.nii.gz``
files for every batch. Prints volumes per second, the fraction of step time
spent waiting for data, and the ratios. Not a test: the numbers depend on the
machine. Goal: data wait < 5 % of step time with the cache. Set
``TEMPLATEFLOW_HOME`` to an offline TemplateFlow home to simulate on
MNI152NLin2009cAsym (otherwise nilearn's 2009a template, same grid size).

Usage::

    python benchmarks/train.py [--subjects 8] [--epochs 2] [--resolution 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from adheat_app import simulate
from adheat_app.io import save_nifti
from adheat_app.models import MODELS
from adheat_app.memory import reuse_cpu_memory
from adheat_app.training.loop import batches, read_batch
from adheat_app.volumes import load_channels


def write_cohort(folder: Path, n_subjects: int, resolution: float) -> tuple[list[Path], np.ndarray]:
    """Template-space images (z-scored inside the brain mask) and targets of a simulated cohort."""
    truth = simulate.build_ground_truth(resolution)
    mask = truth.template.mask_array()
    paths, targets = [], []
    for spec in simulate.plan_cohort(n_subjects, seed=0, effect_size=0.3, anatomy=("template",)):
        image = simulate.template_space_image(truth, spec)
        values = image[mask]
        data = np.where(mask, (image - values.mean()) / values.std(), 0).astype(np.float32)
        path = folder / f"{spec.participant_id}_T1w.nii.gz"
        save_nifti(path, nib.Nifti1Image(data, truth.template.affine))
        paths.append(path)
        targets.append(int(spec.diagnosis == "AD"))
    return paths, np.array(targets)


def train(read, n: int, targets: np.ndarray, shape: tuple[int, ...], model_name: str,
          batch_size: int) -> tuple[float, float]:
    """One epoch reading batches with ``read(rows)``; return (seconds waiting for data, seconds in total)."""
    torch.manual_seed(0)
    model = MODELS[model_name](shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    warm_up = batches(rng.permutation(n), batch_size)[0]  # one untimed step: allocator and thread pools
    model(torch.from_numpy(read(warm_up))).sum().backward()
    wait = total = 0.0
    model.train()
    for idx in batches(rng.permutation(n), batch_size):
        tic = time.perf_counter()
        x = torch.from_numpy(read(idx))
        loaded = time.perf_counter()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(targets[idx]))
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        wait += loaded - tic
        total += done - tic
    return wait, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default="resnet3d")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths, targets = write_cohort(Path(tmp) / "images", args.subjects, args.resolution)
        tic = time.perf_counter()
        volumes = load_channels([(p,) for p in paths], Path(tmp) / "work")
        decode = time.perf_counter() - tic
        shape = volumes.shape[2:]
        print(f"{args.subjects} volumes of {'x'.join(map(str, shape))} ({args.resolution:g} mm), model "
              f"{args.model}, batch {args.batch_size}, {args.epochs} epochs, {args.threads} torch thread(s); "
              f"cache built once in {decode:.2f} s")

        def from_nifti(idx: np.ndarray) -> np.ndarray:
            return np.stack([np.asarray(nib.load(paths[i]).dataobj, dtype=np.float32) for i in idx])[:, None]

        readers = {"cached (memmap)": lambda idx: read_batch(volumes, idx), "NIfTI each epoch": from_nifti}
        sums = {name: np.zeros(2) for name in readers}
        with reuse_cpu_memory(torch.device("cpu")):  # as the training runner does
            for _ in range(args.epochs):  # alternate the modes, so that load from other processes hits both
                for name, read in readers.items():
                    sums[name] += train(read, args.subjects, targets, shape, args.model, args.batch_size)
    n = args.epochs * args.subjects
    results = {name: {"volumes_per_s": n / total, "data_fraction": wait / total, "seconds": total,
                      "read_s_per_volume": wait / n} for name, (wait, total) in sums.items()}
    for name, r in results.items():
        print(f"{name:18s} {r['volumes_per_s']:6.2f} volumes/s, data wait {100 * r['data_fraction']:5.1f} % "
              f"of step time, {1000 * r['read_s_per_volume']:7.2f} ms read per volume ({r['seconds']:.1f} s)")
    cached, nifti = results["cached (memmap)"], results["NIfTI each epoch"]
    print(f"ratios cached/NIfTI: throughput x{cached['volumes_per_s'] / nifti['volumes_per_s']:.2f}, "
          f"read time per volume x{cached['read_s_per_volume'] / nifti['read_s_per_volume']:.3f}, "
          f"data-wait fraction x{cached['data_fraction'] / nifti['data_fraction']:.3f}")


if __name__ == "__main__":
    main()
