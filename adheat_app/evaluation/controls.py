"""Control maps scored exactly like the heatmap methods, which one a map must beat, and the SVM pattern's bootstrap.

A heatmap method "finds" a reference only if it beats maps that know nothing
about the model:

* ``InputMagnitude``: each scan's absolute input (the CNN's input channels)
  inside the brain mask, normalised to unit total like a heatmap and averaged
  over the same groups of scans. Input-proportional methods (Integrated
  Gradients with a zero baseline, LRP) inherit the input's structure, so the
  input itself is a control they must beat.
* ``BaselineDeviation``: each scan's ``|x - b|`` with ``b`` the mean input of
  the training scans of the fold that tested the scan (the ``template``
  baseline of Integrated Gradients and fill of occlusion,
  :func:`adheat_app.attribution.references.training_mean`). Integrated
  Gradients multiplies its gradients by ``x - b``; where every AD scan departs
  from the training mean (the log Jacobian in atrophy), ``|x - b|`` alone
  points at the atrophy without any model. With ``--repeats`` each repeat has
  its own folds, so its own baselines (``fold_baselines(..., repeat)``).
* ``GreyMatterPrior``: the template's grey-matter probability map
  (:func:`grey_matter_prior`; one map, the same for every resample). Atrophy
  references lie in grey matter, so any grey-matter-shaped map scores above chance.
* a method's maps of models that learned nothing (the control suffixes of
  :data:`adheat_app.layout.CONTROLS`: ``<Method>Random`` from the sanity check),
  when present: controls of their own method.

With several input channels the two input controls exist summed over the
channels (each channel's map normalised to unit total, summed, normalised
again; as the methods' summed maps) and per channel (``InputMagnitudelogjacobian``).
:func:`applicable_controls` says which controls a map is measured against:
those of its channel, its own method's model-free maps and the grey-matter
prior; the strongest of them (highest score) decides.

The SVM activation pattern (Haufe et al. 2014) is scored as
:func:`svm_pattern_resamples` computes it: the pattern ``cov(Z) w / var(w'z)``
of the fold-mean weight vector ``w`` (the SVM is not refit) on the features
``Z`` z-scored per voxel once over all scans, for all scans (the value) and
for each bootstrap resample of subjects (the interval): one estimator for both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.overlap import BATCH
from adheat_app.layout import MapName, trained_folds
from adheat_app.templates import Template, resample

INPUT_MAGNITUDE = "InputMagnitude"
BASELINE_DEVIATION = "BaselineDeviation"
GREY_MATTER_PRIOR = "GreyMatterPrior"
#: Controls computed from the inputs, per channel and summed over channels.
INPUT_CONTROLS = (INPUT_MAGNITUDE, BASELINE_DEVIATION)
def is_control(method: str) -> bool:
    """Whether ``method`` names a control map rather than an explanation of the trained model."""
    name = MapName.parse(method)
    return method == GREY_MATTER_PRIOR or name.method in INPUT_CONTROLS or name.is_control


def applicable_controls(method: str, controls: Iterable[str]) -> list[str]:
    """The controls among ``controls`` that the map ``method`` is measured against (see the module docstring)."""
    name = MapName.parse(method)
    out = []
    for control in controls:
        other = MapName.parse(control)
        same_channel = other.channel == name.channel
        if control == GREY_MATTER_PRIOR or (same_channel and other.method in INPUT_CONTROLS and not other.is_control) \
                or (same_channel and other.is_control and other.method == name.method):
            out.append(control)
    return out


def input_controls(values: np.ndarray, channels: tuple[str, ...], name: str) -> dict[str, np.ndarray]:
    """Per-scan maps ``(n, V)`` of one input control from per-channel magnitudes ``values`` ``(n, C, V)``.

    Returns the channel sum under ``name`` and, with several channels, each channel under ``name<channel>``.
    """
    per_channel = [unit_total(values[:, c]) for c in range(len(channels))]
    out = {name: unit_total(sum(per_channel))}
    if len(channels) > 1:
        out.update({MapName(name, channel=channel).desc: maps for channel, maps in zip(channels, per_channel)})
    return out


def unit_total(maps: np.ndarray) -> np.ndarray:
    """Absolute maps ``(n, V)`` each divided by its total (rows summing to 0 stay 0), float32."""
    values = np.abs(np.asarray(maps, dtype=np.float32))
    totals = values.sum(axis=1, dtype=np.float64, keepdims=True)
    return (values / np.where(totals > 0, totals, 1.0)).astype(np.float32)


def grey_matter_prior(template: Template) -> tuple[np.ndarray, str]:
    """Grey-matter probability inside the brain mask ``(V,)`` and where it comes from.

    The template's own grey-matter map when it has one (TemplateFlow's
    ``label-GM_probseg``); otherwise nilearn's ICBM152 2009a grey-matter
    template (shipped with nilearn), resampled linearly onto the analysis grid.
    """
    mask = template.mask_array()
    if template.gm is not None:
        return np.asarray(template.gm.dataobj, dtype=np.float64)[mask], f"{template.space} label-GM probseg"
    from nilearn import datasets

    gm = resample(datasets.load_mni152_gm_template(resolution=1), template.shape, template.affine)
    return (np.clip(np.asarray(gm.dataobj, dtype=np.float64), 0, 1)[mask],
            "nilearn MNI152 2009a grey-matter template (load_mni152_gm_template)")


def svm_pattern_resamples(features: np.ndarray, weights: np.ndarray, counts: np.ndarray, channels: int = 1
                          ) -> Iterator[np.ndarray]:
    """Absolute, unit-total activation patterns of bootstrap resamples, in batches ``(b, V)``.

    Parameters
    ----------
    features : numpy.ndarray
        Scans by voxels ``Z`` (float32), z-scored per voxel over all scans.
    weights : numpy.ndarray
        Weight vector ``w`` ``(V,)`` (the fold-mean SVM weights), held fixed.
    counts : numpy.ndarray
        Resample counts ``(n_resamples, n)`` (:func:`adheat_app.evaluation.overlap.resample_counts`).
    channels : int
        Input channels: the features are ``channels`` blocks of equal length (one per channel), and a
        pattern is the sum of its blocks.

    Yields
    ------
    numpy.ndarray
        For each resample with weights ``c`` (counts / n): ``|sum_i c_i (s_i - s_c) z_i| / var_c(s)``
        normalised to unit total, where ``s = Z w`` and ``s_c``, ``var_c`` are the weighted mean and
        variance of ``s``; the mean of ``z`` drops out because the coefficients sum to 0.
    """
    output = (features @ np.asarray(weights, dtype=features.dtype)).astype(np.float64)
    for start in range(0, len(counts), BATCH):
        c = counts[start:start + BATCH]
        c = c / c.sum(axis=1, keepdims=True)
        centred = output[None, :] - (c @ output)[:, None]
        coefficients = c * centred
        variance = np.sum(coefficients * centred, axis=1, keepdims=True)
        patterns = (coefficients.astype(np.float32) @ features) / np.where(variance > 0, variance, 1.0)
        yield unit_total(patterns.reshape(len(patterns), channels, -1).sum(axis=1))


def fold_baselines(config: RunConfig, cohort: Cohort, inputs: np.ndarray, mask: np.ndarray, repeat: int = 0
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``BaselineDeviation`` baseline of every scan: its testing fold's training mean, inside ``mask``.

    Parameters
    ----------
    config : RunConfig
        Run configuration (models folder, ``--model``).
    cohort : Cohort
        The scans, in the order of ``inputs``.
    inputs : numpy.ndarray
        ``(N, C, X, Y, Z)`` inputs of ``cohort`` (:func:`adheat_app.inputs.load_inputs`).
    mask : numpy.ndarray
        Brain mask (bool, image grid).
    repeat : int
        The repeat of ``--repeats`` whose folds these are.

    Returns
    -------
    tuple of numpy.ndarray or None
        Baselines ``(F + 1, C, V)`` (one per trained fold, then their mean for scans in no test set) and each
        scan's row in them; None before any fold (of that repeat) is trained.
    """
    from adheat_app.attribution.references import training_mean
    from adheat_app.attribution.fold_models import assign_folds
    from adheat_app.training import fold_dir

    folds = trained_folds(config.models_dir, config.training.model, repeat)
    if not folds:
        return None
    means = np.stack([training_mean(fold_dir(config, k, repeat), cohort, inputs)[:, mask] for k in folds])
    baselines = np.concatenate([means, means.mean(axis=0, keepdims=True)])
    position = {k: i for i, k in enumerate(folds)}
    rows = np.array([position.get(a.fold, len(folds)) for a in assign_folds(config, cohort, folds, repeat)])
    return baselines.astype(np.float32), rows
