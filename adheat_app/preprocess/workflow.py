"""The participant level's preprocessing run: a pool of failure-isolated jobs, one per T1w.

:func:`run_preprocessing` runs each input (subject x session) as one job
(:func:`.pipeline.process`) in a pool of ``--nprocs`` spawned processes with
``--omp-nthreads`` threads each (ANTs via ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``,
torch for deepbet). A job that fails writes ``logs/crash-<key>.txt`` and its
key is returned; the others finish. A job that cannot write its outputs (full
disk, read-only folder) stops the run. Inputs whose outputs exist and were
made from the same file content and settings are skipped unless
``--overwrite``. The run ends by rewriting ``group/preproc_qc.tsv`` from every
scan in the output dataset.

:func:`to_native` maps a template-space image back onto a subject's T1w grid
through the saved inverse transform (``--native-space`` heatmaps), with the
registration backend that reads its format.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.io import is_storage_error, write_text
from adheat_app.layout import transform_paths
from adheat_app.preprocess import pipeline, qc, reuse
from adheat_app.preprocess.backends import BACKENDS
from adheat_app.progress import tracked
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)

#: Peak memory of one job (GB) on a grid of 1 mm or finer, and on coarser grids (for ``--mem-gb``).
JOB_MEMORY_GB_FINE, JOB_MEMORY_GB_COARSE = 2.5, 1.2

_WORKER_TEMPLATE: Template | None = None


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan_workers(config: RunConfig, n_jobs: int, resolution: float) -> tuple[int, int]:
    """Number of parallel jobs and threads per job.

    ``--nprocs 0`` uses every CPU, capped by the number of jobs and by
    ``--mem-gb``; ``--omp-nthreads 0`` shares the CPUs among the jobs.
    """
    ex = config.execution
    cpus = _available_cpus()
    workers = ex.nprocs or cpus
    if ex.mem_gb > 0:
        per_job = JOB_MEMORY_GB_FINE if resolution <= 1.0 else JOB_MEMORY_GB_COARSE
        workers = min(workers, max(1, int(ex.mem_gb // per_job)))
    workers = max(1, min(workers, n_jobs))
    threads = ex.omp_nthreads or max(1, cpus // workers)
    return workers, threads


def _init_worker(threads: int, template: Template) -> None:
    """Set the thread counts before antspyx/torch are imported (both read them at import), keep the template."""
    global _WORKER_TEMPLATE
    for name in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    _WORKER_TEMPLATE = template


def _job(config: RunConfig, derivs: Derivatives, t1w: T1wInput, anat: reuse.AnatFiles | None) -> dict:
    return pipeline.process(config, derivs, t1w, _WORKER_TEMPLATE, anat)


def _report_failure(config: RunConfig, t1w: T1wInput, exc: BaseException) -> None:
    """Log one line and write ``logs/crash-<key>.txt`` with the traceback."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    LOGGER.error("%s failed: %s (details: logs/crash-%s.txt)", t1w.key, message, t1w.key)
    remote = getattr(exc, "__cause__", None)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if remote is not None:
        text = str(remote) + "\n" + text
    write_text(config.output_dir / "logs" / f"crash-{t1w.key}.txt",
               f"{t1w.key}: {message}\ninput: {t1w.path}\n\n{text}")


def run_preprocessing(config: RunConfig, inputs: list[T1wInput], derivs: Derivatives, template: Template
                      ) -> list[str]:
    """Preprocess every input into template space; return the keys of the inputs that failed.

    Parameters
    ----------
    config : RunConfig
        Run configuration (``preprocessing`` and ``execution`` sections).
    inputs : list of T1wInput
        One entry per subject and session.
    derivs : Derivatives
        The output dataset.
    template : Template
        The analysis template and grid.

    Returns
    -------
    list of str
        ``T1wInput.key`` of every input that failed (logged, with
        ``logs/crash-<key>.txt``); the others are done.

    Raises
    ------
    InputError
        When ``--anat-derivatives`` lacks an input's files or holds them in another space.
    """
    pre = config.preprocessing
    anat = {}
    if pre.anat_derivatives:
        anat = reuse.find_all(Path(pre.anat_derivatives), inputs, template.space, template.resolution)
    todo = []
    for t1w in inputs:
        if not config.execution.overwrite and pipeline.is_done(config, derivs, t1w, template, anat.get(t1w.key)):
            LOGGER.info("%s: preprocessed outputs are up to date, skipping", t1w.key)
        else:
            todo.append(t1w)
    failed: list[str] = []
    if todo:
        workers, threads = plan_workers(config, len(todo), template.resolution)
        LOGGER.info("Preprocessing %d scan(s) (%s registration, %g mm) with %d process(es) x %d thread(s)",
                    len(todo), "fMRIPrep reuse" if anat else pre.registration, template.resolution, workers,
                    threads)
        failed = _run_pool(config, derivs, todo, template, anat, workers, threads)
    qc.write_qc_table(derivs)
    return failed


def _run_pool(config: RunConfig, derivs: Derivatives, todo: list[T1wInput], template: Template,
              anat: dict, workers: int, threads: int) -> list[str]:
    failed = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads, template)) as pool:
        futures = {pool.submit(_job, config, derivs, t, anat.get(t.key)): t for t in todo}
        for future in tracked(as_completed(futures), "preprocessing", "scan", total=len(futures)):
            t1w = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # any failure of one scan is reported and isolated...
                if is_storage_error(exc, permission=False):  # ...but a full or read-only disk fails them all
                    pool.shutdown(cancel_futures=True)
                    raise
                _report_failure(config, t1w, exc)
                failed.append(t1w.key)
            else:
                for note in result["notes"]:
                    LOGGER.info("%s", note)
                LOGGER.info("%s: done in %.1f s, registration NCC %.3f, brain-mask Dice %.3f", t1w.key,
                            result["seconds"], result["ncc"], result["dice"])
    return sorted(failed)


def to_native(img: nib.Nifti1Image, derivs: Derivatives, t1w: T1wInput, interpolation: str = "linear"
              ) -> nib.Nifti1Image:
    """Map a template-space image onto the subject's T1w grid through its saved inverse transform.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D image in the template space the subject was registered to.
    derivs : Derivatives
        The output dataset holding ``<key>_from-<space>_to-T1w_mode-image_xfm.h5``.
    t1w : T1wInput
        The subject's input T1w (its grid and affine are used).
    interpolation : {"linear", "nearest", "label", "bspline"}
        Interpolation of ``img``.

    Raises
    ------
    InputError
        When the inverse transform does not exist (not preprocessed, or reused
        from ``--anat-derivatives``, which provides no transform).
    """
    extensions = tuple(sorted({backend.transform_extension for backend in BACKENDS.values()}))
    found = transform_paths(derivs.root, t1w, extensions)
    if not found:
        folder = derivs.subject_path(t1w.subject, t1w.session, "xfm", ".h5").parent
        raise InputError(f"no template-to-T1w transform for {t1w.key} in {folder}: run the participant level "
                         "without --anat-derivatives to get native-space maps")
    backend = next(backend for backend in BACKENDS.values() if backend.reads(found[0]))
    return backend.apply(img, nib.load(t1w.path), found[0], interpolation)
