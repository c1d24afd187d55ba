"""The cohort plan: who is simulated, with which diagnosis, demographics, severity, site and seed.

Reproducibility: ``numpy.random.SeedSequence(seed)`` has child 0 for cohort-wide
draws (the order of diagnoses; its children 0 and 1 the site parameters and
site assignment) and child ``i`` for the ``i``-th subject, which in turn has
child 0 for demographics and severity, 1 for anatomy and ``2 + k`` for session
``k``. Results therefore do not depend on ``nprocs``, and a subject keeps its
anatomy and scans when the cohort gains sessions or is made ``null``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from adheat_app.simulate.parents import DEFAULT_ANATOMY
from adheat_app.simulate.regions import draw_asymmetry, draw_subtype


#: Atrophy models: the first is the default.
ATROPHY_MODELS: tuple[str, ...] = ("tissue-loss", "darkening")
#: Default effect size of each atrophy model: the hippocampal volume loss of a typical AD patient of severity 1
#: (tissue-loss; Du et al. 2001: 27 %), or the uniform loss of the region's mean intensity (darkening).
DEFAULT_EFFECT_SIZE = {"tissue-loss": 0.27, "darkening": 0.3}
#: Largest effect size accepted per model (the most severe subject, severity 1.5, loses 1.5 times it).
MAX_EFFECT_SIZE = {"tissue-loss": 0.35, "darkening": 0.5}
SEVERITY_RANGE = (0.5, 1.5)
MCI_FRACTION = 0.5
#: Baseline ages of ADNI-1 (Petersen et al. 2010, Neurology 74:201, Table 1): mean, SD.
AGE_DISTRIBUTION = {"AD": (75.3, 7.5), "CN": (75.8, 5.0), "MCI": (74.7, 7.4)}
AGE_LIMITS = (55, 95)
HEAD_SCALE = {"F": 0.98, "M": 1.02}
HEAD_SCALE_SD = 0.03
VENTRICLE_LOG_SD = 0.3
#: Ranges from which sites other than site 0 draw their departures from the reference scanner.
SITE_VOXEL_CHANGE = (0.10, 0.25)
SITE_CONTRAST_CHANGE = (0.10, 0.25)
SITE_NOISE_LOG_CHANGE = (0.3, 0.7)
SITE_BIAS_SD = (0.04, 0.16)
#: This module's model parameters, as the dataset description records them.
PARAMETERS = {"severity_range": list(SEVERITY_RANGE), "mci_fraction": MCI_FRACTION,
              "age_distribution": {k: list(v) for k, v in AGE_DISTRIBUTION.items()}, "age_limits": list(AGE_LIMITS),
              "ventricle_log_sd": VENTRICLE_LOG_SD, "head_scale": HEAD_SCALE, "head_scale_sd": HEAD_SCALE_SD}


@dataclasses.dataclass(frozen=True)
class Site:
    """A scanner: what every scan acquired there shares.

    Attributes
    ----------
    index : int
        Site number (0 is the reference scanner).
    voxel_scale : float
        Native voxel size relative to the analysis resolution (before the
        per-scan jitter of +- 10 %).
    contrast : float
        Scale of the GM and CSF intensity departures from WM (1: the
        template's contrast).
    noise : float
        Typical Rician noise SD as a fraction of the scan's intensity scale
        (each scan draws 0.5-1.5 times it).
    bias_sd : float
        SD of the coefficients of the quadratic log-bias polynomial.
    """

    index: int
    voxel_scale: float = 1.0
    contrast: float = 1.0
    noise: float = 0.02
    bias_sd: float = 0.08

    def class_means(self, reference: np.ndarray) -> np.ndarray:
        """CSF, GM and WM intensities at this site from the template's ``reference`` means."""
        return reference[2] - self.contrast * (reference[2] - reference)


#: Descriptions of the columns of ``derivatives/simulation/sites.tsv`` (besides ``site`` and group counts).
SITE_COLUMNS = {
    "voxel_scale": "Native voxel size / analysis resolution (each scan +- 10 % per axis).",
    "contrast": "Scale of the GM and CSF intensity departures from WM (1: template).",
    "noise": "Rician noise SD / intensity scale (each scan 0.5-1.5 times it).",
    "bias_sd": "SD of the coefficients of the quadratic log-bias polynomial.",
}
#: The reference scanner (site 0 of every cohort).
REFERENCE_SITE = Site(0)


@dataclasses.dataclass(frozen=True)
class SubjectSpec:
    """What the cohort plan decides about one subject.

    Attributes
    ----------
    label : str
        BIDS subject label without ``sub-`` (``"01"``).
    diagnosis : {"AD", "CN", "MCI"}
        Diagnosis written to ``participants.tsv``.
    age : int
        Age in years.
    sex : {"F", "M"}
        Sex written to ``participants.tsv``.
    head_scale : float
        Linear head size relative to the template.
    ventricle_scale : float
        Ventricle volume factor of the individual anatomy (before age).
    site : Site
        The scanner of all the subject's sessions.
    severity : float
        Atrophy severity ``sigma_s`` applied (0: no atrophy).
    effect_size : float
        The cohort's effect size ``e``.
    atrophy_model : {"tissue-loss", "darkening"}
        How the atrophy is planted.
    seed : numpy.random.SeedSequence
        The subject's own seed.
    sessions : int
        Number of sessions.
    anatomy : str
        The parent the subject is made from (``participants.tsv`` column ``anatomy``).
    subtype : str
        Atrophy subtype (:data:`adheat_app.simulate.regions.SUBTYPES`; drawn for everybody, used by carriers).
    asymmetry : float
        Left/right asymmetry ``a`` of the planted loss (+: left more).
    """

    label: str
    diagnosis: str
    age: int
    sex: str
    head_scale: float
    ventricle_scale: float
    site: Site
    severity: float
    effect_size: float
    atrophy_model: str
    seed: np.random.SeedSequence
    sessions: int
    anatomy: str = "template"
    subtype: str = "typical"
    asymmetry: float = 0.0

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"

    @property
    def scale(self) -> float:
        """``sigma_s * e``: the hippocampal loss of a typical patient of this severity (tissue-loss), or the
        uniform intensity loss (darkening); 0 for non-carriers."""
        return self.severity * self.effect_size

    @property
    def carrier(self) -> bool:
        """Whether the subject carries planted atrophy."""
        return self.severity > 0

    def session_label(self, session: int) -> str | None:
        """BIDS session label of the 0-based ``session`` (None for single-session cohorts)."""
        return f"{session + 1:02d}" if self.sessions > 1 else None


def child_seed(seed: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """Child ``index`` of ``seed``, as ``seed.spawn`` makes it, without mutating ``seed``."""
    return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, index))


def draw_sites(seed: int, n_sites: int) -> list[Site]:
    """The cohort's scanners: site 0 is :data:`REFERENCE_SITE`, the others depart from it at random.

    Each other site's voxel size, contrast and noise differ from the
    reference by a random factor drawn away from 1 (up or down with equal
    probability; ranges in the module constants ``SITE_*``), and its bias
    strength is drawn from ``SITE_BIAS_SD``.
    """
    rng = np.random.default_rng(child_seed(child_seed(np.random.SeedSequence(seed), 0), 0))
    sites = [REFERENCE_SITE]
    for index in range(1, n_sites):
        signs = rng.choice([-1.0, 1.0], 3)
        sites.append(Site(
            index=index,
            voxel_scale=float(1.0 + signs[0] * rng.uniform(*SITE_VOXEL_CHANGE)),
            contrast=float(1.0 + signs[1] * rng.uniform(*SITE_CONTRAST_CHANGE)),
            noise=float(REFERENCE_SITE.noise * np.exp(signs[2] * rng.uniform(*SITE_NOISE_LOG_CHANGE))),
            bias_sd=float(rng.uniform(*SITE_BIAS_SD))))
    return sites


def _assign_sites(diagnoses: Sequence[str], n_sites: int, imbalance: float, rng: np.random.Generator
                  ) -> np.ndarray:
    """Site of every subject: a share ``imbalance`` of AD (rounded) at site 0, see the module docstring."""
    sites = np.zeros(len(diagnoses), dtype=int)
    if n_sites == 1:
        return sites
    shares = {"AD": imbalance, "CN": (1.0 - imbalance) / (n_sites - 1), "MCI": 1.0 / n_sites}
    for group, share in shares.items():
        members = rng.permutation(np.flatnonzero(np.asarray(diagnoses) == group))
        at_reference = int(math.floor(share * len(members) + 0.5))
        others = members[at_reference:]
        sites[others] = 1 + np.arange(len(others)) % (n_sites - 1)
    return sites


def _assign_parents(diagnoses: Sequence[str], parents: list[str], rng: np.random.Generator) -> list[str]:
    """Parent of every subject: within each diagnosis, the parents in turn over a seeded order of its members."""
    assigned = [parents[0]] * len(diagnoses)
    for group in ("AD", "CN", "MCI"):
        members = rng.permutation(np.flatnonzero(np.asarray(diagnoses) == group))
        for turn, member in enumerate(members):
            assigned[int(member)] = parents[turn % len(parents)]
    return assigned


def plan_cohort(n_subjects: int, *, seed: int = 0, effect_size: float | None = None, null: bool = False,
                n_mci: int = 0, sessions: int = 1, atrophy_model: str = ATROPHY_MODELS[0], sites: int = 1,
                site_imbalance: float | None = None, anatomy: Sequence[str] = DEFAULT_ANATOMY) -> list[SubjectSpec]:
    """Decide every subject's label, diagnosis, demographics, parent, site, severity, pattern and seed.

    Parameters
    ----------
    n_subjects : int
        Number of AD plus CN subjects; AD get ``ceil(n / 2)``, CN the rest.
    seed : int
        Root seed of the cohort.
    effect_size : float, optional
        Expected planted loss in AD (see the module docstring); default
        :data:`DEFAULT_EFFECT_SIZE` of the model.
    null : bool
        When True nobody gets atrophy; diagnoses, demographics and sites stay as they would be.
    n_mci : int
        Extra MCI subjects, at half the AD severity.
    sessions : int
        Sessions per subject.
    atrophy_model : {"tissue-loss", "darkening"}
        How atrophy is planted.
    sites : int
        Number of scanners.
    site_imbalance : float, optional
        Share of the AD subjects scanned at site 0 (default ``1 / sites``;
        no effect with one site).
    anatomy : sequence of str
        Names of the parents (:func:`adheat_app.simulate.parents.parent_name`);
        within each diagnosis, subjects take them in turn in a seeded order,
        so every parent gets the same number of each diagnosis (+-1).

    Returns
    -------
    list of SubjectSpec
        Subjects ``01, 02, ...`` (zero-padded to the width of the count), the
        diagnoses in an order shuffled with the seed.
    """
    if effect_size is None:
        effect_size = DEFAULT_EFFECT_SIZE[atrophy_model]
    root = np.random.SeedSequence(seed)
    n_ad = (n_subjects + 1) // 2
    diagnoses = ["AD"] * n_ad + ["CN"] * (n_subjects - n_ad) + ["MCI"] * n_mci
    diagnoses = [str(d) for d in np.random.default_rng(child_seed(root, 0)).permutation(diagnoses)]
    scanners = draw_sites(seed, sites)
    imbalance = 1.0 / sites if site_imbalance is None or sites == 1 else site_imbalance
    site_of = _assign_sites(diagnoses, sites, imbalance, np.random.default_rng(child_seed(child_seed(root, 0), 1)))
    parent_of = _assign_parents(diagnoses, list(anatomy), np.random.default_rng(child_seed(child_seed(root, 0), 2)))
    width = max(2, len(str(len(diagnoses))))
    specs = []
    for number, diagnosis in enumerate(diagnoses, start=1):
        subject_seed = child_seed(root, number)
        rng = np.random.default_rng(child_seed(subject_seed, 0))
        mean, sd = AGE_DISTRIBUTION[diagnosis]
        age = int(np.clip(np.rint(rng.normal(mean, sd)), *AGE_LIMITS))
        sex = str(rng.choice(["F", "M"]))
        head_scale = float(rng.normal(HEAD_SCALE[sex], HEAD_SCALE_SD))
        ventricle_scale = float(np.exp(rng.normal(0.0, VENTRICLE_LOG_SD)))
        draw = float(rng.uniform(*SEVERITY_RANGE))
        severity = 0.0 if null or diagnosis == "CN" else draw * (MCI_FRACTION if diagnosis == "MCI" else 1.0)
        subtype, asymmetry = draw_subtype(rng), draw_asymmetry(rng)
        specs.append(SubjectSpec(
            label=f"{number:0{width}d}", diagnosis=diagnosis, age=age, sex=sex, head_scale=head_scale,
            ventricle_scale=ventricle_scale, site=scanners[site_of[number - 1]], severity=severity,
            effect_size=float(effect_size), atrophy_model=atrophy_model, seed=subject_seed, sessions=sessions,
            anatomy=parent_of[number - 1], subtype=subtype, asymmetry=asymmetry))
    return specs
