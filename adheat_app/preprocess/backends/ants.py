"""ANTs backends: ``--registration syn`` (rigid, affine, then SyN) and ``affine`` (rigid, then affine).

Registration is brain to brain: the skull-stripped, N4-corrected T1w (moving)
to the skull-stripped template (fixed), in one antsRegistration call (ANTs'
library as antspyx ships it) of explicit stages, each starting from the one
before: rigid from the centres of mass (:data:`RIGID`), affine
(:data:`AFFINE`), then symmetric normalisation in two stages, large steps on
the coarse levels (:data:`SYN`) and smaller steps on the fixed grid itself
(:data:`SYN_FINE`); Mattes mutual information throughout; ``affine`` stops
after the affine stage. The command run is recorded in the sidecar. The
result is saved as two ANTs composite HDF5 transforms (forward: T1w ->
template, for images; inverse: template -> T1w).

The quality and time of these stages, and the alternatives that were measured
and rejected, are in ``docs/performance.md``.

Determinism: ANTs' sampling is seeded with ``--seed`` (``--random-seed``);
with one thread per job (``--omp-nthreads 1``) a rerun gives bit-identical
arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.config import RunConfig
from adheat_app.preprocess.backends import BACKENDS
from adheat_app.preprocess.backends._contract import Backend, Registration
from adheat_app.preprocess.register import save_pair


@dataclass(frozen=True)
class Stage:
    """One stage of the antsRegistration call (Mattes mutual information, 32 bins, every stage).

    Attributes
    ----------
    name : str
        Label in the sidecar.
    transform : str
        antsRegistration ``--transform`` (with its gradient step and, for SyN,
        the update and total field smoothing in voxels).
    sampling : str
        Metric sampling after the bins: ``"Regular,0.25"`` (a quarter of the
        voxels, seeded) or ``""`` (dense).
    iterations, shrink, smoothing : tuple
        Per level, coarse to fine (smoothing sigmas in voxels).
    convergence : str
        Threshold and window of ``--convergence``.
    """

    name: str
    transform: str
    sampling: str
    iterations: tuple[int, ...]
    shrink: tuple[int, ...]
    smoothing: tuple[float, ...]
    convergence: str

    def arguments(self, fixed: str, moving: str) -> list[str]:
        """This stage's antsRegistration arguments for the images ``fixed`` and ``moving`` (file paths)."""
        sampling = f",{self.sampling}" if self.sampling else ""
        return ["--transform", self.transform, "--metric", f"MI[{fixed},{moving},1,32{sampling}]",
                "--convergence", f"[{_levels(self.iterations)},{self.convergence}]",
                "--shrink-factors", _levels(self.shrink), "--smoothing-sigmas", f"{_levels(self.smoothing)}vox"]

    def describe(self) -> dict:
        """The stage for the sidecar."""
        return {"Transform": self.transform, "Metric": f"MI[1,32{',' + self.sampling if self.sampling else ''}]",
                "Iterations": list(self.iterations), "ShrinkFactors": list(self.shrink),
                "SmoothingSigmasVoxels": list(self.smoothing), "Convergence": self.convergence}


def _levels(values: tuple) -> str:
    return "x".join(f"{v:g}" for v in values)


#: Rigid, from the centres of mass (coarse levels: it only has to bring the brains into the affine basin).
RIGID = Stage("Rigid", "Rigid[0.1]", "Regular,0.25", (200, 100), (4, 2), (2, 1), "1e-6,10")
#: Affine (coarse levels: a full-resolution level took 7-13 s on the real heads and changed their NCC by <= 0.004).
AFFINE = Stage("Affine", "Affine[0.1]", "Regular,0.25", (200, 100), (4, 2), (2, 1), "1e-6,10")
#: SyN on the coarse levels, large steps (the large deformations of real heads).
SYN = Stage("SyN", "SyN[0.7,2,0]", "", (60, 40, 0), (4, 2, 1), (2, 1, 0), "1e-7,8")
#: SyN on the fixed grid itself, smaller steps (0.7 there lowered the simulated scans' NCC from 0.96 to 0.945).
SYN_FINE = Stage("SyNFine", "SyN[0.5,2,0]", "", (20,), (1,), (0,), "1e-7,8")


class AntsBackend(Backend):
    """antsRegistration with the stages :attr:`stages`, saved as ANTs composite transforms."""

    transform_extension = ".h5"
    transform_type = "ANTs composite transform (HDF5)"

    def __init__(self, name: str, stages: tuple[Stage, ...], deformable: bool, summary: str, words: str):
        self.name, self.stages, self.deformable, self.summary, self._words = name, stages, deformable, summary, words

    def register(self, moving: nib.Nifti1Image, fixed: nib.Nifti1Image, config: RunConfig, workdir: Path
                 ) -> Registration:
        """One antsRegistration call of :attr:`stages`, its metric sampling seeded with ``--seed``."""
        from ants import lib  # the compiled ANTs programs (antspyx's own registration calls the same function)

        seed = int(config.execution.seed)
        moving_path, fixed_path = save_pair(moving, fixed, workdir)
        prefix = workdir / "registration_"
        arguments = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
                     "--write-composite-transform", "1", "--random-seed", str(seed),
                     "--initial-moving-transform", f"[{fixed_path},{moving_path},1]", "--output", str(prefix)]
        for stage in self.stages:
            arguments += stage.arguments(str(fixed_path), str(moving_path))
        status = lib.antsRegistration(arguments)
        if status != 0:
            raise RuntimeError(f"antsRegistration failed (exit status {status}) registering {moving_path}")
        zooms = np.sqrt((fixed.affine[:3, :3] ** 2).sum(axis=0))
        command = " ".join(arguments).replace(str(workdir) + "/", "")
        return Registration(Path(f"{prefix}Composite.h5"), Path(f"{prefix}InverseComposite.h5"),
                            {"Method": self.name, "Initialization": "centres of mass", "Seed": seed,
                             "Metric": "Mattes mutual information",
                             "FixedGridMM": [round(float(z), 3) for z in zooms],
                             "Stages": {stage.name: stage.describe() for stage in self.stages},
                             "Command": f"antsRegistration {command}"})

    def methods_text(self, versions: dict[str, str]) -> str:
        """The registration clause of the methods text."""
        return (f"{self._words} registration in ANTs (antspyx {versions.get('antspyx', 'unknown version')}; "
                "Mattes mutual information, template grid of at least 2 mm)\n[@avants2008syn]")


BACKENDS.register("syn")(AntsBackend(
    "syn", (RIGID, AFFINE, SYN, SYN_FINE), True, "ANTs: rigid, affine, then symmetric normalisation (SyN)",
    "rigid, affine and symmetric normalisation (SyN)"))
BACKENDS.register("affine")(AntsBackend(
    "affine", (RIGID, AFFINE), False, "ANTs: rigid, then affine", "rigid and affine"))
