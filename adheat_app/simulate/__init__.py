"""Simulated BIDS cohort with known, planted atrophy: the ground truth of adheat.

This package owns the ``adheat-simulate`` command and everything it writes: a raw
BIDS dataset of skull-stripped T1w scans of Alzheimer's disease (AD), control
(CN) and optionally MCI subjects made from parent heads (:mod:`.parents`: by
default one that is not the registration target), with atrophy planted in
named AAL3 regions at region-specific rates (:mod:`.regions`), and a
``derivatives/simulation`` dataset holding the truth: the cohort's planted
atrophy in template space; per subject the template-space log-Jacobian of the
planted change, its region map and the volume it removed; optionally each
carrier's scan without its atrophy (``--twins``); per scan the
planted region, the hippocampus and the tissue classes mapped through the
scan's true warp onto its native grid (so registration accuracy can be
measured). The demo and the tests of preprocessing, training and heatmaps are
built on it. ``docs/simulation.md`` relates every parameter to the literature.

Generative model
----------------
Coordinates are world millimetres; displacement fields live on the analysis
grid (the template's) in voxel units (:mod:`adheat_app.deformation`). "The
template" below is the subject's parent placed on that grid.

0. Tissue: the parent T1w ``T`` (scaled so its 99th brain percentile is 1)
   is unmixed into partial-volume fractions of CSF, GM and WM: ``mu`` are the
   means of a 3-class Gaussian mixture of ``T`` inside the brain, and a voxel of
   intensity between two neighbouring class means is a linear mix of the two.
   An image is synthesised from fractions as ``sum_c f_c mu_c``, so the
   template itself is reproduced (within ``[mu_CSF, mu_WM]``).
1. Planted atrophy (severity ``sigma_s``, effect size ``e``), on the grid.
   ``R`` is the union of the AAL3 regions matching ``regions``, ``w = G_3mm *
   1_R``. Each region ``r`` of ``R`` has its loss ``l_r``
   (:func:`.regions.region_losses`: rate, subtype, asymmetry); ``l_s`` is their
   mean over the voxels of ``R``.

   * ``tissue-loss`` (default): a flow ``v = A grad(u)`` whose divergence is
     ``-(f_GM + f_WM) l(x) 1_R`` (the tissue of ``R``: the grey matter of its AAL
     labels and the partial-volume white matter inside them, loses volume)
     plus a positive source of equal total in the CSF and the space just
     outside the brain near ``R`` (weight ``exp(-d^2 / 2 (8 mm)^2)``, ``d``
     the distance to ``R``: sulci widen, the temporal horn grows); ``A`` is solved so
     that ``R`` loses exactly ``l_s`` of its volume: ``mean_R det(I + Dv) =
     1 - l_s`` (averaged over each voxel cube of the trilinear field). The
     template-to-subject map is ``y -> y + v(y)``; its log-Jacobian (log
     volume ratio of every voxel cube) is the truth. GM and WM fractions are
     carried by the inverse map; whatever the tissue leaves inside the brain
     envelope (which does not move) is CSF, and intensities keep their class
     values, so the change is morphometric.
   * ``darkening`` (the earlier model): ``T_s(y) = T(y + c_s p(y)) exp(-g_s
     w(y))`` with ``p = -grad(w) / max|grad(w)|``, ``c_s = 3 mm l_s`` and the
     gain ``g_s`` solved so that the mean intensity in ``R`` falls by exactly
     ``l_s``.
2. Age and individual anatomy: grey matter shrinks by 0.9 % per year of age
   above 73 (below: grows) everywhere, the volume going to the CSF in
   proportion to its fraction (ventricles and sulci widen with age); the
   ventricles (CSF deeper than 15 mm) are scaled by a log-normal factor (SD
   0.3) at the expense of all tissue; then ``d_s``: Gaussian-smoothed white
   noise of 1.5 mm SD (sigma 12 mm) plus a folding field of 0.7 mm SD (sigma
   4 mm).
3. Native scan: the head sits in the scanner at ``q = Rot (S (x - c)) + t``
   (``c`` the brain centroid, rotations up to 10 degrees, translations up to
   10 mm, ``S`` the head size: 0.98 (F) or 1.02 (M) with SD 0.03, times 1 +- 3 %
   per axis). The scan's site sets its voxel size (``resolution * scale * (1 +-
   10 %)`` per axis), GM/CSF-to-WM contrast, bias strength and noise level;
   each scan draws one of :data:`ORIENTATIONS`, a field of view 10-25 mm larger
   than the brain on each side, a bias ``b = exp(quadratic polynomial)``, a
   global scale ``k`` in [300, 3000] and Rician noise of (0.5-1.5) x the site's
   noise fraction of ``k``, stored as int16 or float32 (half each).

The warps are composed as coordinate maps and each map is interpolated once per
image (trilinear; labels by nearest neighbour): native voxel ``v`` -> ``x``
(inverse pose) -> ``x + d_s(x)`` -> inverse age/ventricle flow (to first
order: minus the flow) -> inverse planted flow (solved by Newton iterations at
every point; darkening's warp is defined in that direction) -> template
fractions and labels.

Cohort
------
AD get ``ceil(n / 2)`` of ``n_subjects``, CN the rest, plus ``n_mci`` MCI.
Ages are normal with ADNI-1's baseline means and SDs (:data:`.cohort.AGE_DISTRIBUTION`,
clipped to 55-95), sexes equally likely; parents are assigned in turn within each
diagnosis; every subject draws a subtype and an asymmetry (used by carriers). ``sigma_s ~ U(0.5, 1.5)`` for AD, half such a
draw for MCI, 0 for CN and for everybody in a ``null`` cohort (whose
diagnoses, ages and sites stay as they would be). With ``sites`` > 1, a share
``site_imbalance`` of the AD subjects is scanned at site 0 (default: 1 /
``sites``, balanced), CN at site 0 get the share ``(1 - site_imbalance) /
(sites - 1)``, everybody else is spread evenly over the other sites; site 0 is
the reference scanner.

Modules
-------
``parents`` (the parent heads, prepared and cached), ``regions`` (where and how
much atrophy: rates, subtypes, asymmetry), ``anatomy`` (a parent's tissue
fractions, atlas regions and flows on the grid), ``cohort`` (the plan: diagnoses, demographics, severities, sites, seeds),
``subject`` (a subject's anatomy and calibrated atrophy), ``scan`` (native scan
synthesis), ``template_space`` (the template-space writer of the tests),
``dataset`` (the raw dataset, its truth and the twins) and ``cli`` (the command line).
"""

from adheat_app.simulate.anatomy import DEFAULT_REGIONS, GroundTruth, build_ground_truth
from adheat_app.simulate.cohort import (
    AGE_DISTRIBUTION,
    ATROPHY_MODELS,
    DEFAULT_EFFECT_SIZE,
    HEAD_SCALE,
    REFERENCE_SITE,
    Site,
    SubjectSpec,
    draw_sites,
    plan_cohort,
)
from adheat_app.simulate.dataset import log_jacobian_path, simulate_cohort
from adheat_app.simulate.scan import simulate_scan
from adheat_app.simulate.subject import subject_anatomy
from adheat_app.simulate.template_space import relevance_ratio, template_space_image, write_template_space_derivatives

__all__ = [
    "AGE_DISTRIBUTION", "ATROPHY_MODELS", "DEFAULT_EFFECT_SIZE", "DEFAULT_REGIONS", "HEAD_SCALE", "REFERENCE_SITE",
    "GroundTruth", "Site", "SubjectSpec", "build_ground_truth", "draw_sites", "log_jacobian_path", "plan_cohort",
    "relevance_ratio", "simulate_cohort", "simulate_scan", "subject_anatomy", "template_space_image",
    "write_template_space_derivatives",
]
