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
from scipy import ndimage

from adheat_app import __version__
from adheat_app.bids import Derivatives, T1wInput, sidecar_path
from adheat_app.errors import InputError
from adheat_app.io import atomic_path, save_nifti, write_json, write_text, write_tsv
from adheat_app.layout import (
    dataset_description,
    participants_sidecar,
    participants_table,
    simulation_parent_paths,
    simulation_root,
    simulation_sites,
    simulation_subject_map,
    simulation_truth_path,
    simulation_twin,
)
from adheat_app.simulate import anatomy as anatomy_model
from adheat_app.simulate import cohort as cohort_model
from adheat_app.simulate import scan as scan_model
from adheat_app.simulate import regions as regions_model
from adheat_app.simulate import subject as subject_model
from adheat_app.simulate.anatomy import (
    DEFAULT_REGIONS,
    REGION_SIGMA_MM,
    TISSUES,
    GroundTruth,
    build_ground_truth,
    region_map,
    to_template_space,
)
from adheat_app.simulate.cohort import (
    AGE_DISTRIBUTION,
    ATROPHY_MODELS,
    DEFAULT_EFFECT_SIZE,
    MAX_EFFECT_SIZE,
    SITE_COLUMNS,
    SubjectSpec,
    plan_cohort,
)
from adheat_app.simulate.geometry import nifti
from adheat_app.simulate.parents import BUILTIN, DEFAULT_ANATOMY, parent_name
from adheat_app.simulate.regions import ATROPHIED_LOSS, SUBTYPES
from adheat_app.simulate.scan import NativeScan, simulate_scan
from adheat_app.simulate.subject import SubjectAnatomy, subject_anatomy

LOGGER = logging.getLogger(__name__)


#: Analysis-grid voxel sizes accepted (mm).
MIN_RESOLUTION, MAX_RESOLUTION = 0.5, 8.0
BIDS_VERSION = "1.10.0"


def _generated_by() -> dict:
    return {"Name": "adheat-simulate", "Version": __version__,
            "Description": "Simulated T1w cohort with planted atrophy (adheat_app.simulate)"}


def log_jacobian_path(root: Path, truth: GroundTruth, label: str) -> Path:
    """Where the template-space log-Jacobian of a subject's planted change is written under ``root``."""
    return simulation_subject_map(root, label, truth.template.space, truth.template.res_label, "logjacobian")


@dataclasses.dataclass(frozen=True)
class SubjectResult:
    """What the dataset tables need of a written subject."""

    planted_loss: float
    volume_loss: float
    losses: dict[int, float]


def write_subject(truth: GroundTruth, spec: SubjectSpec, out_dir: Path, twins: bool = False) -> SubjectResult:
    """Simulate every session of one subject and write its scans and truth maps.

    Parameters
    ----------
    truth : GroundTruth
        The anatomy of the subject's parent.
    spec : SubjectSpec
        The subject.
    out_dir : Path
        Root of the raw dataset; the truth goes to ``derivatives/simulation``.
    twins : bool
        Also write each session of a carrier without its planted atrophy (the twin).
    """
    anatomy = subject_anatomy(truth, spec)
    raw = Derivatives(out_dir, out_dir)  # used for BIDS path naming only
    truth_root = simulation_root(out_dir)
    truth_dir = Derivatives(truth_root, out_dir)
    _write_template_space_truth(truth_dir, truth, spec, anatomy)
    twin_spec = dataclasses.replace(spec, severity=0.0)
    twin_anatomy = subject_anatomy(truth, twin_spec) if twins and spec.carrier else None
    for session in range(spec.sessions):
        scan = simulate_scan(truth, spec, anatomy, session)
        ses = spec.session_label(session)
        t1w = raw.subject_path(spec.label, ses, "T1w")
        save_nifti(t1w, scan.t1w)
        write_json(sidecar_path(t1w), {"SkullStripped": True})
        source = f"bids:raw:{t1w.relative_to(out_dir).as_posix()}"
        if twin_anatomy is not None:
            twin = simulate_scan(truth, twin_spec, twin_anatomy, session)
            truth_dir.write_image(simulation_twin(truth_root, T1wInput(spec.label, ses, t1w)), twin.t1w, {
                "Description": "The raw scan's twin without the disease: the same parent, individual anatomy, age, "
                               "pose, grid, site, bias field and noise draw, with no planted atrophy.",
                "Sources": [source], "TwinOf": source, "SkullStripped": True, "PlantedLoss": 0.0})
        _write_scan_truth(truth_dir, truth, spec, anatomy, scan, ses, source)
    return SubjectResult(anatomy.planted_loss, anatomy.volume_loss, anatomy.losses)


def _write_template_space_truth(truth_dir: Derivatives, truth: GroundTruth, spec: SubjectSpec,
                                anatomy: SubjectAnatomy) -> None:
    """A subject's planted log-Jacobian and region map on the template grid."""
    truth_root = truth_dir.root
    template = truth.template
    log_jacobian = to_template_space(truth, anatomy.log_jacobian) if anatomy.log_jacobian is not None \
        else np.zeros(template.shape, np.float32)
    described = {
        "Space": template.space, "Resolution": template.res_description, "AtrophyModel": spec.atrophy_model,
        "Diagnosis": spec.diagnosis, "Anatomy": spec.anatomy, "Severity": spec.severity,
        "Subtype": spec.subtype if spec.carrier else None, "Asymmetry": spec.asymmetry if spec.carrier else None,
        "RegionLosses": {truth.names[v]: round(loss, 6) for v, loss in anatomy.losses.items()},
        "PlantedLoss": anatomy.planted_loss, "VolumeLoss": anatomy.volume_loss,
        "VolumeLossML": anatomy.volume_loss * float(truth.region.sum()) * truth.voxel_ml,
    }
    truth_dir.write_image(log_jacobian_path(truth_root, truth, spec.label),
                          nifti(log_jacobian, template.affine, 4), {
        "Description": "Log-Jacobian determinant of the planted deformation from the parent to this subject "
                       "(negative: volume lost), computed in the parent's anatomy and written on the template "
                       "grid through the parent's SyN correspondence. 0 everywhere without atrophy. Age, "
                       "ventricle size and individual anatomy are not included.", **described})
    truth_dir.write_image(simulation_subject_map(truth_root, spec.label, template.space, template.res_label,
                                                 "probseg"),
                          nifti(region_map(truth, anatomy.losses), template.affine, 4), {
        "Description": f"This subject's atrophied regions (AAL3 regions of the planted set losing at least "
                       f"{ATROPHIED_LOSS:g} of their volume) on the template, smoothed by a Gaussian (sigma "
                       f"{REGION_SIGMA_MM} mm), 0..1; all 0 for non-carriers.", "Atlas": "AAL3",
        "AtrophiedLoss": ATROPHIED_LOSS, "SmoothingSigmaMM": REGION_SIGMA_MM, **described})


def _write_scan_truth(truth_dir: Derivatives, truth: GroundTruth, spec: SubjectSpec, anatomy: SubjectAnatomy,
                      scan: NativeScan, ses: str | None, source: str) -> None:
    """One scan's truth on its grid: the planted region, the hippocampus and the tissue classes."""
    atrophy = truth_dir.subject_path(spec.label, ses, "mask", desc="atrophy")
    truth_dir.write_image(atrophy, scan.atrophy_mask, {
        "Description": "Planted atrophy region (AAL3 regions matching Regions) mapped through this scan's "
                       "true warp onto the T1w grid (nearest neighbour).",
        "Type": "ROI", "Sources": [source], "Atlas": "AAL3", "Regions": list(truth.regions),
        "AtlasRegions": truth.region_names, "Diagnosis": spec.diagnosis, "AtrophyModel": spec.atrophy_model,
        "Anatomy": spec.anatomy, "Severity": spec.severity, "PlantedLoss": anatomy.planted_loss,
        "Carried": spec.carrier, "VolumeLoss": anatomy.volume_loss, "ShiftMM": anatomy.shift,
        "IntensityGain": anatomy.gain, "Site": spec.site.index, "Orientation": scan.orientation,
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


_WORKER_TRUTHS: dict[str, GroundTruth] = {}


def _init_worker(truths: dict[str, GroundTruth]) -> None:
    _WORKER_TRUTHS.update(truths)


def _write_subject_in_worker(spec: SubjectSpec, out_dir: Path, twins: bool) -> SubjectResult:
    return write_subject(_WORKER_TRUTHS[spec.anatomy], spec, out_dir, twins)


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


def _write_parents(truth_root: Path, truths: dict[str, GroundTruth]) -> None:
    """Write every parent that is not the template: brain, mask, AAL3 labels and SyN transforms."""
    for truth in truths.values():
        parent, template = truth.parent, truth.template
        if parent.to_template is None:
            continue
        paths = simulation_parent_paths(truth_root, parent.name, template.space, template.res_label)
        described = {"Source": parent.source, "Space": template.space, "Resolution": template.res_description,
                     "Description": "Parent anatomy of the subjects whose participants.tsv anatomy is "
                                    f"{parent.name}: placed on the analysis grid by an affine registration to "
                                    "the template; its AAL3 labels came through one SyN registration."}
        derivs = Derivatives(truth_root, truth_root.parent.parent)
        derivs.write_image(paths["brain"], nifti(parent.brain, template.affine, 4),
                           {**described, "SkullStripped": True})
        derivs.write_image(paths["mask"], nifti(parent.mask.astype(np.uint8), template.affine, 4),
                           {**described, "Type": "Brain"})
        derivs.write_image(paths["labels"], nifti(parent.labels, template.affine, 4), {**described, "Atlas": "AAL3"})
        for key, text in (("forward", "parent -> template (ANTs composite; resamples parent images onto the "
                                      "template)"), ("inverse", "template -> parent (ANTs composite)")):
            with atomic_path(paths[key]) as tmp:
                tmp.write_bytes(parent.transforms[0 if key == "forward" else 1])
            write_json(sidecar_path(paths[key]), {**described, "Transform": text})


def _cohort_map(truths: dict[str, GroundTruth], specs: list[SubjectSpec], results: list[SubjectResult]
                ) -> np.ndarray:
    """Mean over the AD carriers of their region maps; the planted set smoothed when nobody carries atrophy."""
    maps = [region_map(truths[s.anatomy], r.losses) for s, r in zip(specs, results)
            if s.diagnosis == "AD" and s.carrier]
    if maps:
        return np.mean(maps, axis=0).astype(np.float32)
    truth = next(iter(truths.values()))
    sigma = REGION_SIGMA_MM / truth.template.resolution
    return ndimage.gaussian_filter(truth.template_region.astype(np.float32), sigma)


def _write_dataset_files(out_dir: Path, truths: dict[str, GroundTruth], specs: list[SubjectSpec],
                         results: list[SubjectResult], parameters: dict) -> None:
    """Write the dataset-level files: truth maps, parents, tables, README and both descriptions (raw last)."""
    truth = next(iter(truths.values()))
    template = truth.template
    truth_root = simulation_root(out_dir)
    region_ml = float(truth.template_region.sum()) * truth.voxel_ml
    carriers = [s.participant_id for s in specs if s.carrier]
    Derivatives(truth_root, out_dir).write_image(
        simulation_truth_path(out_dir, template.space, template.res_label),
        nifti(_cohort_map(truths, specs, results), template.affine, 4), {
            "Description": "The cohort's planted atrophy: the mean over the AD subjects of their region maps "
                           "(sub-*/anat/*_desc-atrophy_probseg: the AAL3 regions each loses at least "
                           f"{ATROPHIED_LOSS:g} of, smoothed by a Gaussian of sigma {REGION_SIGMA_MM} mm), 0..1: the "
                           "share of AD subjects whose atrophy covers a voxel. Without any carrier, the planted "
                           "set smoothed. Per-subject amounts are in participants.tsv here.",
            "Space": template.space, "Resolution": template.res_description, "Atlas": "AAL3",
            "Regions": list(truth.regions), "AtlasRegions": truth.region_names,
            "SmoothingSigmaMM": REGION_SIGMA_MM, "AtrophiedLoss": ATROPHIED_LOSS,
            "RegionVolumeML": region_ml, "AtrophyModel": parameters["atrophy_model"],
            "EffectSize": parameters["effect_size"], "Null": parameters["null"], "CarriedBy": carriers,
            "MeanOver": [s.participant_id for s in specs if s.diagnosis == "AD" and s.carrier],
        })
    _write_parents(truth_root, truths)
    sites = _write_truth_tables(truth_root, truths, specs, results)
    write_json(dataset_description(truth_root), {
        "Name": "adheat-simulate ground truth", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [_generated_by()], "DatasetLinks": {"raw": "../.."}, "Simulation": parameters,
    })
    _write_raw_files(out_dir, truths, specs, sites, parameters)


def _demographics(specs: list[SubjectSpec]) -> dict[str, list]:
    """The columns of the raw ``participants.tsv``."""
    return {"participant_id": [s.participant_id for s in specs], "diagnosis": [s.diagnosis for s in specs],
            "age": [s.age for s in specs], "sex": [s.sex for s in specs], "site": [s.site.index for s in specs],
            "anatomy": [s.anatomy for s in specs]}


def _write_truth_tables(truth_root: Path, truths: dict[str, GroundTruth], specs: list[SubjectSpec],
                        results: list[SubjectResult]) -> list:
    """The truth's ``participants.tsv`` and ``sites.tsv`` with their sidecars; returns the sites."""
    demographics = _demographics(specs)
    parent_ml = {name: float(t.region.sum()) * t.voxel_ml for name, t in truths.items()}
    truth_table = pd.DataFrame({
        **demographics, "head_scale": [round(s.head_scale, 6) for s in specs],
        "ventricle_scale": [round(s.ventricle_scale, 6) for s in specs],
        "severity": [round(s.severity, 6) for s in specs],
        "subtype": [s.subtype if s.carrier else "n/a" for s in specs],
        "asymmetry": [round(s.asymmetry, 6) if s.carrier else 0.0 for s in specs],
        "planted_loss": [round(r.planted_loss, 6) for r in results],
        "volume_loss": [round(r.volume_loss, 6) for r in results],
        "volume_loss_ml": [round(r.volume_loss * parent_ml[s.anatomy], 4) for s, r in zip(specs, results)]})
    write_tsv(participants_table(truth_root), truth_table)
    write_json(participants_sidecar(truth_root), {
        "diagnosis": {"Description": "Simulated diagnosis (as in the raw participants.tsv)."},
        "age": {"Description": "Age (years) as in the raw participants.tsv."},
        "sex": {"Description": "Sex as in the raw participants.tsv."},
        "site": {"Description": "Scanner site (sites.tsv here)."},
        "anatomy": {"Description": "Parent anatomy the subject is made from (as in the raw participants.tsv)."},
        "head_scale": {"Description": "Linear head size relative to the template (0.98 F / 1.02 M, SD 0.03)."},
        "ventricle_scale": {"Description": "Ventricle volume factor of the individual anatomy, before age."},
        "severity": {"Description": "Atrophy severity sigma_s: U(0.5, 1.5) for AD, half such a draw for MCI, "
                                    "0 for CN and in null cohorts."},
        "subtype": {"Description": "Atrophy subtype (tissue-loss; n/a for non-carriers).",
                    "Levels": {k: f"{v[0]:g} of AD (Ferreira et al. 2020); limbic x {v[1]:g}, cortical x {v[2]:g}"
                               for k, v in SUBTYPES.items()}},
        "asymmetry": {"Description": "Left/right asymmetry a of the planted loss: left regions x (1 + a), right "
                                     "x (1 - a)."},
        "planted_loss": {"Description": "Mean planted fractional loss over the voxels of the planted set in the "
                                        "subject's parent (tissue-loss: volume; darkening: mean intensity)."},
        "volume_loss": {"Description": "Fraction of the planted set's volume removed by the planted deformation, "
                                       "in the parent (equals planted_loss for tissue-loss)."},
        "volume_loss_ml": {"Description": "That volume in ml of the parent (before head size and anatomy).",
                           "Units": "ml"},
    })
    sites = sorted({s.site for s in specs}, key=lambda site: site.index)
    site_table = pd.DataFrame([
        {"site": site.index, **{k: round(v, 6) for k, v in dataclasses.asdict(site).items() if k != "index"},
         **{f"n_{group}": sum(s.site == site and s.diagnosis == group for s in specs)
            for group in ("AD", "CN", "MCI")}}
        for site in sites])
    write_tsv(simulation_sites(truth_root), site_table)
    write_json(sidecar_path(simulation_sites(truth_root)),
               {name: {"Description": text} for name, text in SITE_COLUMNS.items()})
    return sites


def _write_raw_files(out_dir: Path, truths: dict[str, GroundTruth], specs: list[SubjectSpec], sites: list,
                     parameters: dict) -> None:
    """The raw dataset's ``participants.tsv`` and sidecar, README and description (last)."""
    truth = next(iter(truths.values()))
    template = truth.template
    write_tsv(participants_table(out_dir), pd.DataFrame(_demographics(specs)))
    ages = ", ".join(f"{group} {mean:g} +- {sd:g}" for group, (mean, sd) in AGE_DISTRIBUTION.items())
    write_json(participants_sidecar(out_dir), {
        "diagnosis": {"Description": "Simulated diagnosis", "Levels": {
            "AD": "Alzheimer's disease (planted atrophy)", "CN": "cognitively normal control",
            "MCI": "mild cognitive impairment (half the AD atrophy)"}},
        "age": {"Description": f"Age at scan (simulated: {ages})", "Units": "year"},
        "sex": {"Description": "Sex (simulated)", "Levels": {"F": "female", "M": "male"}},
        "site": {"Description": "Scanner site (simulated; 0 is the reference scanner)",
                 "Levels": {str(site.index): "reference scanner" if site.index == 0 else f"scanner {site.index}"
                            for site in sites}},
        "anatomy": {"Description": "Parent head the subject's anatomy is made from",
                    "Levels": {name: t.parent.source for name, t in truths.items()}},
    })
    model = ("volume of" if parameters["atrophy_model"] == "tissue-loss" else "intensity in")
    write_text(out_dir / "README", (
        "Simulated T1w cohort made by adheat-simulate (adheat_app.simulate).\n\n"
        f"Every scan is made from a parent head ({', '.join(truths)}; participants.tsv column anatomy) on the "
        f"{template.space} grid at {template.resolution:g} mm: its tissue classes are aged, the ventricles "
        "resized, deformed by a smooth random displacement and a folding field, and the head is scaled and posed "
        "in a scanner of its site with its own voxel size, orientation, contrast, bias field and Rician noise. "
        f"AD subjects (and MCI at half severity) lose {model} the AAL3 regions {', '.join(truth.regions)}, each "
        "at its own rate, with a subtype and a left/right asymmetry of their own"
        + (" (not in this null cohort: nobody carries it)" if parameters["null"] else "") + ".\n\n"
        "The truth is in derivatives/simulation: the cohort's planted atrophy in template space, per subject the "
        "template-space log-Jacobian of the planted change and its region map, the amounts (participants.tsv), "
        "the sites (sites.tsv), the parents (parents/), per scan the region, the hippocampus and the tissue "
        "classes on the scan's grid (and with --twins the scan without its atrophy), and every simulation "
        "parameter in its dataset_description.json.\n"
        + ("No real person's data are included.\n" if all(n in ("template", *BUILTIN) for n in truths) else
           "The parents given with --anatomy are their owners' images: share this dataset only as their terms "
           "allow.\n")))
    write_json(dataset_description(out_dir), {
        "Name": "adheat-simulate cohort", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
        "GeneratedBy": [_generated_by()],
    })


def simulate_cohort(out_dir: str | os.PathLike, n_subjects: int = 40, resolution: float = 2.0, seed: int = 0,
                    effect_size: float | None = None, regions: Sequence[str] = DEFAULT_REGIONS, sessions: int = 1,
                    null: bool = False, n_mci: int = 0, nprocs: int = 1, atrophy_model: str = ATROPHY_MODELS[0],
                    sites: int = 1, site_imbalance: float | None = None,
                    anatomy: Sequence[str | os.PathLike] = DEFAULT_ANATOMY, twins: bool = False) -> Path:
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
        Tissue-loss: the hippocampal volume loss of a typical AD patient of severity 1 (other regions at
        their rates, :mod:`adheat_app.simulate.regions`); darkening: the loss of the region's mean
        intensity. Default :data:`DEFAULT_EFFECT_SIZE` of the model, at most :data:`MAX_EFFECT_SIZE`.
    regions : sequence of str
        AAL3 name patterns of the planted set.
    sessions : int
        Sessions per subject (same anatomy, new pose, grid, bias and noise).
    null : bool
        Plant no atrophy at all (diagnoses stay balanced but carry no signal).
    n_mci : int
        Extra MCI subjects with half the AD severity.
    nprocs : int
        Subjects simulated in parallel (0: every CPU). Does not change the output.
    atrophy_model : {"tissue-loss", "darkening"}
        How atrophy is planted (package docstring).
    sites : int
        Number of scanner sites.
    site_imbalance : float, optional
        Share of AD subjects scanned at site 0 (default: ``1 / sites``; no
        effect with one site).
    anatomy : sequence of str or path-like
        Parent heads: ``template``, built-in names
        (:data:`adheat_app.simulate.parents.BUILTIN`) or T1w files; subjects
        are assigned to them balanced by diagnosis.
    twins : bool
        Also write every AD and MCI scan without its planted atrophy under
        ``derivatives/simulation`` (:func:`adheat_app.layout.simulation_twin`).

    Returns
    -------
    Path
        The dataset root.

    Raises
    ------
    InputError
        For argument values that cannot work; nothing is written then.
    """
    out = Path(out_dir).absolute()
    regions = tuple(regions)
    if effect_size is None:
        effect_size = DEFAULT_EFFECT_SIZE.get(atrophy_model, 0.0)
    _check_arguments(out, n_subjects, resolution, effect_size, atrophy_model, regions, sessions, n_mci, nprocs,
                     sites, site_imbalance)
    names = [parent_name(a) for a in anatomy]
    if not names or len(set(names)) != len(names):
        raise InputError(f"--anatomy {' '.join(map(str, anatomy))}: give one or more parents with distinct names")
    truths = {name: build_ground_truth(resolution, regions, a) for name, a in zip(names, anatomy)}
    specs = plan_cohort(n_subjects, seed=seed, effect_size=effect_size, null=null, n_mci=n_mci, sessions=sessions,
                        atrophy_model=atrophy_model, sites=sites, site_imbalance=site_imbalance, anatomy=names)
    try:
        results = _write_subjects(truths, specs, out, twins, nprocs)
    except ValueError as exc:  # a planted loss the deformation cannot reach
        raise InputError(f"--effect-size {effect_size}: {exc}") from None
    parameters = _parameters(truths, seed=seed, atrophy_model=atrophy_model, effect_size=effect_size,
                             regions=list(regions), null=null, twins=twins, n_subjects=n_subjects, n_mci=n_mci,
                             sessions=sessions, sites=sites,
                             site_imbalance=1.0 / sites if site_imbalance is None or sites == 1 else site_imbalance)
    _write_dataset_files(out, truths, specs, results, parameters)
    return out


def _write_subjects(truths: dict[str, GroundTruth], specs: list[SubjectSpec], out: Path, twins: bool,
                    nprocs: int) -> list[SubjectResult]:
    """Every subject, in ``nprocs`` processes (0: every CPU); the results in the order of ``specs``."""
    workers = min(nprocs or os.cpu_count() or 1, len(specs))
    LOGGER.info("Simulating %d subject(s) from %s in %s (%d process(es))", len(specs), ", ".join(truths), out,
                workers)
    if workers == 1:
        return [write_subject(truths[spec.anatomy], spec, out, twins) for spec in specs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(truths,)) as pool:
        futures = [pool.submit(_write_subject_in_worker, spec, out, twins) for spec in specs]
        return [future.result() for future in futures]


def _parameters(truths: dict[str, GroundTruth], **options) -> dict:
    """Every simulation parameter, for the truth's dataset description."""
    truth = next(iter(truths.values()))
    return {
        **options, "space": truth.template.space, "resolution": truth.template.resolution,
        "res_label": truth.template.res_label, "template_source": truth.template.source,
        "anatomy": {name: t.parent.source for name, t in truths.items()},
        "model": {
            "tissue_means": {name: [round(float(m), 6) for m in t.class_means] for name, t in truths.items()},
            **anatomy_model.PARAMETERS, **cohort_model.PARAMETERS, **subject_model.PARAMETERS,
            **scan_model.PARAMETERS, **regions_model.PARAMETERS,
        },
    }
