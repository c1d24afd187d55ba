"""The dataset writer: the raw BIDS cohort and its truth under ``derivatives/simulation``."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from adheat_app import __version__
from adheat_app.bids import Derivatives, sidecar_path
from adheat_app.errors import InputError
from adheat_app.io import save_nifti, write_json, write_text, write_tsv
from adheat_app.simulate import anatomy as anatomy_model
from adheat_app.simulate import cohort as cohort_model
from adheat_app.simulate import scan as scan_model
from adheat_app.simulate import subject as subject_model
from adheat_app.simulate.anatomy import DEFAULT_REGIONS, REGION_SIGMA_MM, TISSUES, GroundTruth, build_ground_truth
from adheat_app.simulate.cohort import (
    ATROPHY_MODELS,
    DEFAULT_EFFECT_SIZE,
    MAX_EFFECT_SIZE,
    SITE_COLUMNS,
    SubjectSpec,
    plan_cohort,
)
from adheat_app.simulate.geometry import nifti
from adheat_app.simulate.scan import simulate_scan
from adheat_app.simulate.subject import subject_anatomy

LOGGER = logging.getLogger(__name__)


#: Analysis-grid voxel sizes accepted (mm).
MIN_RESOLUTION, MAX_RESOLUTION = 0.5, 8.0
BIDS_VERSION = "1.10.0"


def _generated_by() -> dict:
    return {"Name": "adheat-simulate", "Version": __version__,
            "Description": "Simulated T1w cohort with planted atrophy (adheat_app.simulate)"}


def log_jacobian_path(root: Path, truth: GroundTruth, label: str) -> Path:
    """Where the template-space log-Jacobian of a subject's planted change is written under ``root``."""
    template = truth.template
    return Derivatives(root, root).subject_path(label, None, "logjacobian", space=template.space,
                                                res=template.res_label, desc="atrophy")


def write_subject(truth: GroundTruth, spec: SubjectSpec, out_dir: Path) -> float:
    """Simulate every session of one subject and write its scans and truth maps.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    out_dir : Path
        Root of the raw dataset; the truth goes to ``derivatives/simulation``.

    Returns
    -------
    float
        The fraction of the region's volume the planted deformation removed.
    """
    anatomy = subject_anatomy(truth, spec)
    raw = Derivatives(out_dir, out_dir)  # used for BIDS path naming only
    truth_root = out_dir / "derivatives" / "simulation"
    truth_dir = Derivatives(truth_root, out_dir)
    log_jacobian = anatomy.log_jacobian if anatomy.log_jacobian is not None \
        else np.zeros(truth.template.shape, np.float32)
    template = truth.template
    truth_dir.write_image(log_jacobian_path(truth_root, truth, spec.label),
                          nifti(log_jacobian, template.affine, 4), {
        "Description": "Log-Jacobian determinant of the planted deformation from the template to this subject, "
                       "on the template grid (negative: the template's volume shrinks in the subject). 0 "
                       "everywhere without atrophy. Age, ventricle size and individual anatomy are not included.",
        "Space": template.space, "Resolution": template.res_description, "AtrophyModel": spec.atrophy_model,
        "Diagnosis": spec.diagnosis, "Severity": spec.severity, "PlantedLoss": spec.planted_loss,
        "VolumeLoss": anatomy.volume_loss,
        "VolumeLossML": anatomy.volume_loss * float(truth.region.sum()) * truth.voxel_ml,
    })
    for session in range(spec.sessions):
        scan = simulate_scan(truth, spec, anatomy, session)
        ses = spec.session_label(session)
        t1w = raw.subject_path(spec.label, ses, "T1w")
        save_nifti(t1w, scan.t1w)
        write_json(sidecar_path(t1w), {"SkullStripped": True})
        source = f"bids:raw:{t1w.relative_to(out_dir).as_posix()}"
        atrophy = truth_dir.subject_path(spec.label, ses, "mask", desc="atrophy")
        truth_dir.write_image(atrophy, scan.atrophy_mask, {
            "Description": "Planted atrophy region (AAL3 regions matching Regions) mapped through this scan's "
                           "true warp onto the T1w grid (nearest neighbour).",
            "Type": "ROI", "Sources": [source], "Atlas": "AAL3", "Regions": list(truth.regions),
            "AtlasRegions": truth.region_names, "Diagnosis": spec.diagnosis, "AtrophyModel": spec.atrophy_model,
            "Severity": spec.severity, "PlantedLoss": spec.planted_loss, "Carried": spec.planted_loss > 0,
            "VolumeLoss": anatomy.volume_loss, "ShiftMM": anatomy.shift, "IntensityGain": anatomy.gain,
            "Site": spec.site.index, "Orientation": scan.orientation,
        })
        hippocampus = truth_dir.subject_path(spec.label, ses, "mask", desc="hippocampus")
        truth_dir.write_image(hippocampus, scan.hippocampus_mask, {
            "Description": "AAL3 hippocampus (left and right) mapped through this scan's true warp onto the T1w "
                           "grid (nearest neighbour).",
            "Type": "ROI", "Sources": [source], "Atlas": "AAL3",
            "AtlasRegions": truth.hippocampus_names,
        })
        tissue = truth_dir.subject_path(spec.label, ses, "dseg", desc="tissue")
        truth_dir.write_image(tissue, scan.tissue, {
            "Description": "Tissue class of largest partial-volume fraction on the T1w grid, after the true warp "
                           "(background where less than half the voxel is brain).",
            "Sources": [source], "Labels": {"0": "background", **{str(i + 1): t for i, t in enumerate(TISSUES)}},
        })
    return anatomy.volume_loss


_WORKER_TRUTH: GroundTruth | None = None


def _init_worker(truth: GroundTruth) -> None:
    global _WORKER_TRUTH
    _WORKER_TRUTH = truth


def _write_subject_in_worker(spec: SubjectSpec, out_dir: Path) -> float:
    return write_subject(_WORKER_TRUTH, spec, out_dir)


def _check_arguments(out_dir: Path, n_subjects: int, resolution: float, effect_size: float, atrophy_model: str,
                     regions: Sequence[str], sessions: int, n_mci: int, nprocs: int, sites: int,
                     site_imbalance: float | None) -> None:
    """Reject argument values that cannot work, naming the option."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not an empty folder; choose a new output folder")
    if n_subjects < 2:
        raise InputError(f"--n-subjects {n_subjects}: need at least 2 (one AD, one CN)")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise InputError(f"--resolution {resolution}: use a voxel size between {MIN_RESOLUTION:g} and "
                         f"{MAX_RESOLUTION:g} mm")
    if atrophy_model not in ATROPHY_MODELS:
        raise InputError(f"--atrophy-model {atrophy_model}: use one of {', '.join(ATROPHY_MODELS)}")
    if not 0 <= effect_size <= MAX_EFFECT_SIZE[atrophy_model]:
        raise InputError(f"--effect-size {effect_size}: use a value between 0 and "
                         f"{MAX_EFFECT_SIZE[atrophy_model]} for --atrophy-model {atrophy_model}")
    if not regions:
        raise InputError("--regions: name at least one AAL3 region pattern")
    if sessions < 1 or n_mci < 0 or nprocs < 0:
        raise InputError("--sessions must be at least 1, --n-mci and --nprocs must not be negative")
    if sites < 1:
        raise InputError(f"--sites {sites}: need at least 1")
    if site_imbalance is not None and not 0 <= site_imbalance <= 1:
        raise InputError(f"--site-imbalance {site_imbalance}: use a share between 0 and 1")


def _write_dataset_files(out_dir: Path, truth: GroundTruth, specs: list[SubjectSpec], volume_losses: list[float],
                         parameters: dict) -> None:
    """Write the dataset-level files: truth map, tables, README and both descriptions (raw last)."""
    template = truth.template
    truth_root = out_dir / "derivatives" / "simulation"
    name = f"space-{template.space}_res-{template.res_label}_desc-atrophy_probseg.nii.gz"
    region_ml = float(truth.region.sum()) * truth.voxel_ml
    Derivatives(truth_root, out_dir).write_image(truth_root / name, nifti(truth.probseg, template.affine, 4), {
        "Description": "Planted atrophy region: the AAL3 regions matching Regions, smoothed by a Gaussian "
                       f"(sigma {REGION_SIGMA_MM} mm), 0..1. The atrophy model says how a carrier loses it "
                       "(tissue-loss: grey-matter volume; darkening: intensity); per-subject amounts are in "
                       "participants.tsv here.",
        "Space": template.space, "Resolution": template.res_description, "Atlas": "AAL3",
        "Regions": list(truth.regions), "AtlasRegions": truth.region_names, "SmoothingSigmaMM": REGION_SIGMA_MM,
        "RegionVolumeML": region_ml, "AtrophyModel": parameters["atrophy_model"],
        "EffectSize": parameters["effect_size"], "Null": parameters["null"],
        "CarriedBy": [s.participant_id for s in specs if s.planted_loss > 0],
    })
    demographics = {
        "participant_id": [s.participant_id for s in specs], "diagnosis": [s.diagnosis for s in specs],
        "age": [s.age for s in specs], "sex": [s.sex for s in specs], "site": [s.site.index for s in specs]}
    truth_table = pd.DataFrame({
        **demographics, "head_scale": [round(s.head_scale, 6) for s in specs],
        "ventricle_scale": [round(s.ventricle_scale, 6) for s in specs],
        "severity": [round(s.severity, 6) for s in specs], "planted_loss": [round(s.planted_loss, 6) for s in specs],
        "volume_loss": [round(v, 6) for v in volume_losses],
        "volume_loss_ml": [round(v * region_ml, 4) for v in volume_losses]})
    write_tsv(truth_root / "participants.tsv", truth_table)
    write_json(truth_root / "participants.json", {
        "diagnosis": {"Description": "Simulated diagnosis (as in the raw participants.tsv)."},
        "age": {"Description": "Age (years) as in the raw participants.tsv."},
        "sex": {"Description": "Sex as in the raw participants.tsv."},
        "site": {"Description": "Scanner site (sites.tsv here)."},
        "head_scale": {"Description": "Linear head size relative to the template (0.98 F / 1.02 M, SD 0.03)."},
        "ventricle_scale": {"Description": "Ventricle volume factor of the individual anatomy, before age."},
        "severity": {"Description": "Atrophy severity sigma_s: U(0.5, 1.5) for AD, half such a draw for MCI, "
                                    "0 for CN and in null cohorts."},
        "planted_loss": {"Description": "severity x effect size: the fraction of the planted region's volume "
                                        "(tissue-loss) or mean intensity (darkening) the subject loses."},
        "volume_loss": {"Description": "Fraction of the planted region's volume removed by the planted "
                                       "deformation, in template space (equals planted_loss for tissue-loss)."},
        "volume_loss_ml": {"Description": "That volume in ml of the template (before head size and anatomy).",
                           "Units": "ml"},
    })
    sites = sorted({s.site for s in specs}, key=lambda site: site.index)
    site_table = pd.DataFrame([
        {"site": site.index, **{k: round(v, 6) for k, v in dataclasses.asdict(site).items() if k != "index"},
         **{f"n_{group}": sum(s.site == site and s.diagnosis == group for s in specs)
            for group in ("AD", "CN", "MCI")}}
        for site in sites])
    write_tsv(truth_root / "sites.tsv", site_table)
    write_json(truth_root / "sites.json", {name: {"Description": text} for name, text in SITE_COLUMNS.items()})
    write_json(truth_root / "dataset_description.json", {
        "Name": "adheat-simulate ground truth", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [_generated_by()], "DatasetLinks": {"raw": "../.."}, "Simulation": parameters,
    })
    write_tsv(out_dir / "participants.tsv", pd.DataFrame(demographics))
    write_json(out_dir / "participants.json", {
        "diagnosis": {"Description": "Simulated diagnosis", "Levels": {
            "AD": "Alzheimer's disease (planted atrophy)", "CN": "cognitively normal control",
            "MCI": "mild cognitive impairment (half the AD atrophy)"}},
        "age": {"Description": "Age at scan (simulated: AD 75 +- 8, CN 73 +- 6, MCI 74 +- 7)", "Units": "year"},
        "sex": {"Description": "Sex (simulated)", "Levels": {"F": "female", "M": "male"}},
        "site": {"Description": "Scanner site (simulated; 0 is the reference scanner)",
                 "Levels": {str(site.index): "reference scanner" if site.index == 0 else f"scanner {site.index}"
                            for site in sites}},
    })
    model = ("grey matter of" if parameters["atrophy_model"] == "tissue-loss" else "darkening of")
    write_text(out_dir / "README", (
        "Simulated T1w cohort made by adheat-simulate (adheat_app.simulate).\n\n"
        f"Every scan is made from the skull-stripped {template.space} template at {template.resolution:g} mm: its "
        "tissue classes are aged, the ventricles resized, deformed by a smooth random displacement and a folding "
        "field, and the head is scaled and posed in a scanner of its site with its own voxel size, orientation, "
        "contrast, bias field and Rician noise. AD subjects (and MCI at half severity) lose "
        f"{model} the AAL3 regions {', '.join(truth.regions)}"
        + (" (not in this null cohort: nobody carries it)" if parameters["null"] else "") + ".\n\n"
        "The truth is in derivatives/simulation: the planted region in template space, per subject the "
        "log-Jacobian of the planted change and the volume it removed (participants.tsv), the sites (sites.tsv), "
        "per scan the region, the hippocampus and the tissue classes on the scan's grid, and every simulation "
        "parameter in its dataset_description.json.\n"
        "No real person's data are included.\n"))
    write_json(out_dir / "dataset_description.json", {
        "Name": "adheat-simulate cohort", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
        "GeneratedBy": [_generated_by()],
    })


def simulate_cohort(out_dir: str | os.PathLike, n_subjects: int = 40, resolution: float = 2.0, seed: int = 0,
                    effect_size: float | None = None, regions: Sequence[str] = DEFAULT_REGIONS, sessions: int = 1,
                    null: bool = False, n_mci: int = 0, nprocs: int = 1, atrophy_model: str = ATROPHY_MODELS[0],
                    sites: int = 1, site_imbalance: float | None = None) -> Path:
    """Write a simulated BIDS cohort with planted atrophy, and its ground truth.

    Parameters
    ----------
    out_dir : path-like
        New (or empty) folder for the raw BIDS dataset.
    n_subjects : int
        AD plus CN subjects (balanced: AD get ``ceil(n / 2)``).
    resolution : float
        Analysis-grid voxel size in mm; native voxels are this times the
        site's voxel scale, +- 10 %.
    seed : int
        Root seed; the same seed gives byte-identical files.
    effect_size : float, optional
        Expected planted loss in AD: fraction of the region's volume
        (``tissue-loss``) or mean intensity (``darkening``); default
        :data:`DEFAULT_EFFECT_SIZE` of the model, at most
        :data:`MAX_EFFECT_SIZE`.
    regions : sequence of str
        AAL3 name patterns of the planted region.
    sessions : int
        Sessions per subject (same anatomy, new pose, grid, bias and noise).
    null : bool
        Plant no atrophy at all (diagnoses stay balanced but carry no signal).
    n_mci : int
        Extra MCI subjects with half the AD severity.
    nprocs : int
        Subjects simulated in parallel (0: every CPU). Does not change the output.
    atrophy_model : {"tissue-loss", "darkening"}
        How atrophy is planted (module docstring).
    sites : int
        Number of scanner sites.
    site_imbalance : float, optional
        Share of AD subjects scanned at site 0 (default: ``1 / sites``; no
        effect with one site).

    Returns
    -------
    Path
        The dataset root.

    Raises
    ------
    InputError
        For argument values that cannot work.
    """
    out = Path(out_dir).absolute()
    regions = tuple(regions)
    if effect_size is None:
        effect_size = DEFAULT_EFFECT_SIZE.get(atrophy_model, 0.0)
    _check_arguments(out, n_subjects, resolution, effect_size, atrophy_model, regions, sessions, n_mci, nprocs,
                     sites, site_imbalance)
    truth = build_ground_truth(resolution, regions)
    specs = plan_cohort(n_subjects, seed=seed, effect_size=effect_size, null=null, n_mci=n_mci, sessions=sessions,
                        atrophy_model=atrophy_model, sites=sites, site_imbalance=site_imbalance)
    workers = min(nprocs or os.cpu_count() or 1, len(specs))
    LOGGER.info("Simulating %d subject(s) x %d session(s) at %g mm in %s (%d process(es))",
                len(specs), sessions, resolution, out, workers)
    try:
        if workers == 1:
            volume_losses = [write_subject(truth, spec, out) for spec in specs]
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(truth,)) as pool:
                futures = [pool.submit(_write_subject_in_worker, spec, out) for spec in specs]
                volume_losses = [future.result() for future in futures]
    except ValueError as exc:  # a planted loss the deformation cannot reach
        raise InputError(f"--effect-size {effect_size}: {exc}") from None
    parameters = {
        "seed": seed, "atrophy_model": atrophy_model, "effect_size": effect_size, "regions": list(regions),
        "null": null, "space": truth.template.space, "resolution": truth.template.resolution,
        "res_label": truth.template.res_label, "template_source": truth.template.source,
        "n_subjects": n_subjects, "n_mci": n_mci, "sessions": sessions, "sites": sites,
        "site_imbalance": 1.0 / sites if site_imbalance is None or sites == 1 else site_imbalance,
        "model": {
            "tissue_means": [round(float(m), 6) for m in truth.class_means],
            **anatomy_model.PARAMETERS, **cohort_model.PARAMETERS, **subject_model.PARAMETERS,
            **scan_model.PARAMETERS,
        },
    }
    _write_dataset_files(out, truth, specs, volume_losses, parameters)
    return out
