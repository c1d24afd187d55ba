"""Benchmark of the report figures: nilearn mosaics and glass brains with and without a frozen heap (not a test).

nilearn runs a full garbage collection for every image it reads, so its
figures slow down with the size of the heap; a group run holds torch, pandas
and the cohort's tables. This script fills the heap with ``--objects`` small
Python objects (a stand-in for that state), then draws ``--figures`` slice
mosaics and glass brains of a random map over the template, once as the
reports draw them (:func:`adheat_app.plotting.frozen_heap`) and once plainly
(the undecorated functions), and prints both wall times and their ratio.

Usage::

    python benchmarks/report.py [--figures 10] [--objects 3000000] [--resolution 4]
"""

from __future__ import annotations

import argparse
import time

import nibabel as nib
import numpy as np

from adheat_app import plotting
from adheat_app.templates import get_template


def draw(figures: int, stat_mosaic, glass_brain, img: nib.Nifti1Image, background: nib.Nifti1Image) -> float:
    """Wall time of ``figures`` mosaics and as many glass brains."""
    tic = time.perf_counter()
    for _ in range(figures):
        stat_mosaic(img, background, "benchmark")
        glass_brain(img, "benchmark")
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    """Print the wall times of the frozen and the plain drawing and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--figures", type=int, default=10, help="mosaics (and as many glass brains) per variant")
    parser.add_argument("--objects", type=int, default=3_000_000, help="small objects kept alive on the heap")
    parser.add_argument("--resolution", type=float, default=4.0)
    args = parser.parse_args(argv)
    template = get_template(args.resolution)
    rng = np.random.default_rng(0)
    data = np.where(template.mask_array(), rng.random(template.shape), 0).astype(np.float32)
    img = nib.Nifti1Image(data, template.affine)
    heap = [[i] for i in range(args.objects)]  # noqa: F841  (kept alive: what the collector has to scan)
    plotting.stat_mosaic(img, template.t1w, "warm-up")
    frozen = draw(args.figures, plotting.stat_mosaic, plotting.glass_brain, img, template.t1w)
    plain = draw(args.figures, plotting.stat_mosaic.__wrapped__, plotting.glass_brain.__wrapped__, img, template.t1w)
    print(f"{args.figures} mosaics + {args.figures} glass brains at {args.resolution:g} mm, "
          f"{args.objects:,} objects on the heap")
    print(f"plain (nilearn's collections scan the heap): {plain:6.1f} s")
    print(f"frozen heap (adheat's reports):              {frozen:6.1f} s")
    print(f"speed-up: {plain / frozen:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
