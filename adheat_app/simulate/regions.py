"""Where AD atrophy is planted and how much: region groups with their loss, subtypes, left/right asymmetry.

Each AAL3 region of the planted set ``R`` belongs to a :class:`RegionGroup`
whose ``loss`` is the fractional volume loss of a typical AD patient against
controls (sources in docs/simulation.md; regions of ``R`` in no group get
:data:`OTHER_LOSS`). A subject's loss in region ``r`` is

    ``l_r = min(MAX_REGION_LOSS, s * e * loss_g / loss_hippocampus * f_k(subtype) * (1 +- a))``

with ``s`` the severity, ``e`` the effect size (the hippocampal loss of a
typical AD patient of severity 1), ``f_k`` the subtype's factor for the
group's kind (limbic or cortical; :data:`SUBTYPES`, drawn with the published
proportions) and ``a`` the subject's asymmetry (+ left, - right;
:data:`ASYMMETRY_SD`). Darkening cohorts keep one uniform loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RegionGroup:
    """AAL3 regions that lose volume at one rate.

    Attributes
    ----------
    name : str
        Group name (``"hippocampus"``).
    patterns : tuple of str
        AAL3 name patterns of its regions.
    loss : float
        Fractional volume loss of a typical AD patient against controls.
    kind : {"limbic", "cortical"}
        Which subtype factor applies.
    """

    name: str
    patterns: tuple[str, ...]
    loss: float
    kind: str


#: The region groups (docs/simulation.md gives each loss its source).
GROUPS: tuple[RegionGroup, ...] = (
    RegionGroup("hippocampus", ("Hippocampus",), 0.27, "limbic"),
    RegionGroup("entorhinal", ("ParaHippocampal",), 0.30, "limbic"),
    RegionGroup("amygdala", ("Amygdala",), 0.25, "limbic"),
    RegionGroup("temporal", ("Temporal_Inf", "Temporal_Mid"), 0.08, "cortical"),
    RegionGroup("parietal", ("Parietal_Inf", "Angular", "SupraMarginal", "Precuneus"), 0.06, "cortical"),
    RegionGroup("posterior cingulate", ("Cingulate_Post",), 0.06, "cortical"),
)
#: Loss of a region of ``R`` in no group (a cortical region).
OTHER_LOSS = 0.06
#: The group whose loss the effect size is: the hippocampus.
REFERENCE_GROUP = "hippocampus"
#: Subtypes: name -> (proportion among AD, limbic factor, cortical factor).
SUBTYPES: dict[str, tuple[float, float, float]] = {
    "typical": (0.55, 1.0, 1.0),
    "limbic-predominant": (0.21, 1.3, 0.4),
    "hippocampal-sparing": (0.17, 0.4, 1.3),
    "minimal-atrophy": (0.15, 0.35, 0.35),
}
#: SD of the left/right asymmetry ``a`` (clipped to +-3 SD).
ASYMMETRY_SD = 0.1
#: Largest loss of any one region (the flow folds beyond about this).
MAX_REGION_LOSS = 0.5
#: A subject's region counts as atrophied (its truth map) from this loss on.
ATROPHIED_LOSS = 0.05
#: Model parameters, as the dataset description records them.
PARAMETERS = {
    "region_groups": {g.name: {"patterns": list(g.patterns), "loss": g.loss, "kind": g.kind} for g in GROUPS},
    "other_loss": OTHER_LOSS, "subtypes": {k: list(v) for k, v in SUBTYPES.items()},
    "asymmetry_sd": ASYMMETRY_SD, "max_region_loss": MAX_REGION_LOSS, "atrophied_loss": ATROPHIED_LOSS,
}


def default_regions() -> tuple[str, ...]:
    """The AAL3 patterns of every group: the default planted set."""
    return tuple(p for group in GROUPS for p in group.patterns)


def group_of(name: str) -> RegionGroup | None:
    """The group an AAL3 region name belongs to (None when in none)."""
    for group in GROUPS:
        if any(p.lower() in name.lower() for p in group.patterns):
            return group
    return None


def relative_loss(name: str) -> tuple[float, str]:
    """An AAL3 region's loss relative to the hippocampus's, and its kind."""
    group = group_of(name)
    reference = next(g.loss for g in GROUPS if g.name == REFERENCE_GROUP)
    if group is None:
        return OTHER_LOSS / reference, "cortical"
    return group.loss / reference, group.kind


def hemisphere(name: str) -> int:
    """+1 for a left AAL3 region (``_L``), -1 for a right one, 0 otherwise."""
    return 1 if name.endswith("_L") else -1 if name.endswith("_R") else 0


def draw_subtype(rng: np.random.Generator) -> str:
    """One subtype, drawn with the proportions of :data:`SUBTYPES` (normalised to sum 1)."""
    names = list(SUBTYPES)
    shares = np.array([SUBTYPES[n][0] for n in names])
    return names[int(rng.choice(len(names), p=shares / shares.sum()))]


def draw_asymmetry(rng: np.random.Generator) -> float:
    """Left/right asymmetry ``a`` ~ N(0, ASYMMETRY_SD) clipped to +-3 SD."""
    return float(np.clip(rng.normal(0.0, ASYMMETRY_SD), -3 * ASYMMETRY_SD, 3 * ASYMMETRY_SD))


def region_losses(names: dict[int, str], scale: float, subtype: str, asymmetry: float) -> dict[int, float]:
    """Each region's fractional loss ``l_r`` (module docstring) for ``scale = s * e``."""
    if scale <= 0:
        return {value: 0.0 for value in names}
    _, limbic, cortical = SUBTYPES[subtype]
    losses = {}
    for value, name in names.items():
        relative, kind = relative_loss(name)
        factor = limbic if kind == "limbic" else cortical
        losses[value] = min(MAX_REGION_LOSS, scale * relative * factor * (1 + asymmetry * hemisphere(name)))
    return losses
