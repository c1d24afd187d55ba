"""The ``adheat-simulate`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from adheat_app.errors import EXIT_OK, EXIT_USAGE, InputError
from adheat_app.simulate.anatomy import DEFAULT_REGIONS
from adheat_app.simulate.cohort import ATROPHY_MODELS, DEFAULT_EFFECT_SIZE, MAX_EFFECT_SIZE
from adheat_app.simulate.dataset import simulate_cohort
from adheat_app.simulate.parents import BUILTIN, DEFAULT_ANATOMY


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are :class:`InputError` (one line, exit 2), not a usage dump."""

    def error(self, message: str):
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``adheat-simulate`` command-line parser."""
    parser = _Parser(
        prog="adheat-simulate",
        description="Write a simulated BIDS cohort (AD, CN, optional MCI) with atrophy planted in AAL3 regions, "
                    "ages, sexes, head sizes and scanner sites, and its ground truth under "
                    "OUT/derivatives/simulation (docs/simulation.md).")
    parser.add_argument("out_dir", metavar="OUT", type=Path, help="New or empty output folder.")
    parser.add_argument("--n-subjects", type=int, default=40, help="AD plus CN subjects (default: %(default)s).")
    parser.add_argument("--resolution", type=float, default=2.0,
                        help="Analysis-grid voxel size in mm (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    parser.add_argument("--atrophy-model", choices=ATROPHY_MODELS, default=ATROPHY_MODELS[0],
                        help="'tissue-loss': the tissue of the regions loses volume to CSF, each region at its own "
                             "rate, through a smooth deformation (intensities keep their tissue values); "
                             "'darkening': the earlier model, "
                             "the regions' intensity falls (default: %(default)s).")
    parser.add_argument("--effect-size", type=float, default=None,
                        help="Planted loss in AD: the hippocampal volume fraction a typical patient of severity 1 "
                             "loses, other regions at their own rates (tissue-loss, default "
                             f"{DEFAULT_EFFECT_SIZE['tissue-loss']}, at most {MAX_EFFECT_SIZE['tissue-loss']}) or "
                             f"the loss of their mean intensity (darkening, default "
                             f"{DEFAULT_EFFECT_SIZE['darkening']}, at most {MAX_EFFECT_SIZE['darkening']}).")
    parser.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS), metavar="PATTERN",
                        help="AAL3 region name patterns of the planted atrophy (default: %(default)s).")
    parser.add_argument("--sessions", type=int, default=1, help="Sessions per subject (default: %(default)s).")
    parser.add_argument("--null", action="store_true", help="Plant no atrophy (labels carry no signal).")
    parser.add_argument("--n-mci", type=int, default=0, help="Extra MCI subjects at half severity.")
    parser.add_argument("--sites", type=int, default=1,
                        help="Scanner sites, each with its own voxel size, contrast, bias and noise; site 0 is the "
                             "reference scanner (default: %(default)s).")
    parser.add_argument("--site-imbalance", type=float, default=None, metavar="F",
                        help="Share of the AD subjects scanned at site 0 (default: 1 / sites, balanced; no effect "
                             "with one site); CN fill site 0 with the share (1 - F) / (sites - 1). With --sites 2, "
                             "--null and F = 1 the label is carried by the site only.")
    parser.add_argument("--anatomy", nargs="+", default=list(DEFAULT_ANATOMY), metavar="FILE",
                        help="Parent heads the subjects are made from, assigned balanced by diagnosis: T1w files "
                             "(whole head or skull-stripped, any orientation), 'template' (the registration target "
                             f"itself) or a built-in ({', '.join(BUILTIN)}) (default: %(default)s).")
    parser.add_argument("--twins", action="store_true",
                        help="Also write every AD and MCI scan without its planted atrophy (same anatomy, pose, "
                             "bias and noise) under OUT/derivatives/simulation (desc-twin_T1w).")
    parser.add_argument("--nprocs", type=int, default=1,
                        help="Subjects simulated in parallel; 0 = every CPU (default: %(default)s).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``adheat-simulate``; return the exit code (0 done, 2 bad arguments)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # after --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except InputError as exc:
        print(f"adheat-simulate: error: {exc} (see adheat-simulate --help)", file=sys.stderr)
        return EXIT_USAGE
    # A handler for this call only (not logging.basicConfig, which would outlive it on the root logger and
    # keep writing to whatever sys.stderr was at the first call).
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    package_logger = logging.getLogger("adheat_app")
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(min(handler.level, previous_level or logging.WARNING))
    try:
        out = simulate_cohort(args.out_dir, n_subjects=args.n_subjects, resolution=args.resolution,
                              seed=args.seed, effect_size=args.effect_size, regions=args.regions,
                              sessions=args.sessions, null=args.null, n_mci=args.n_mci, nprocs=args.nprocs,
                              atrophy_model=args.atrophy_model, sites=args.sites,
                              site_imbalance=args.site_imbalance, anatomy=args.anatomy, twins=args.twins)
    except InputError as exc:
        print(f"adheat-simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
    print(out)
    return EXIT_OK
