"""Channel ablation: which input channel a several-channel model uses, measured on its output, not its gradients.

The first convolution mixes the channels, so a gradient on one channel can
follow units driven by another: per-channel heatmaps do not say which channel
the model relies on. Here each channel of a scan is replaced, one at a time, by
that channel of the fold's training mean image (:mod:`.references`: the
population average the model saw, so the scan loses what sets it apart in that
channel only), and the drop of the explained output (``--explain-output``,
:func:`~.output.output_drop`) for the scan's *true* class is recorded: the
evidence for the right answer that the channel carried. Every channel replaced
at once gives the full drop (``all``), the ceiling the channels share.

Scans are those of every fold's test set, each explained by the fold model that
held it out (out-of-fold, as the heatmaps); scans without a known diagnosis are
left out. Forward passes only, packed into padded passes of ``context.batch``
rows (:func:`~.base.class_logits`): ``C + 2`` passes per scan.

Per channel (and ``all``): the mean drop over subjects (a subject's scans
averaged first) with a 95 % percentile bootstrap interval over subjects
(``--n-bootstrap`` resamples, seeded by ``--seed``), the share of the full drop,
and ``used``: whether the interval lies above 0 (0 is the drop of a channel the
model ignores: the chance level). :func:`run_channel_ablation` writes
``group/channel_ablation.tsv`` and its sidecar at the group level when the
models read more than one channel.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext, class_logits
from adheat_app.attribution.output import output_drop
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.io import write_table
from adheat_app.layout import CHANNEL_ABLATION, group_table

LOGGER = logging.getLogger(__name__)

#: Row of every channel replaced at once.
ALL = "all"
#: Interval coverage.
LEVEL = 0.95


def channel_drops(model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, fill: torch.Tensor,
                  context: MethodContext, output: str) -> np.ndarray:
    """Output drops ``(N, C + 1)``: each channel replaced by ``fill`` alone, then all channels at once.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    volumes : torch.Tensor
        ``(N, C, X, Y, Z)`` scans.
    targets : torch.Tensor
        ``(N,)`` class whose explained output is followed.
    fill : torch.Tensor
        ``(C, X, Y, Z)`` the fold's training mean image.
    context : MethodContext
        Batch size and device of the passes.
    output : str
        The explained output (``--explain-output``).
    """
    clean = class_logits(model, volumes, context)
    fill = fill.to(volumes.device).reshape(volumes.shape[1:])
    drops = []
    for channel in [*range(volumes.shape[1]), None]:
        ablated = volumes.clone()
        if channel is None:
            ablated[:] = fill
        else:
            ablated[:, channel] = fill[channel]
        drops.append(output_drop(clean, class_logits(model, ablated, context), targets, output))
    return torch.stack(drops, dim=1).cpu().numpy().astype(np.float64)


def ablation_table(drops: np.ndarray, subjects: list[str], channels: tuple[str, ...], n_bootstrap: int,
                   seed: int) -> pd.DataFrame:
    """One row per channel (and ``all``): mean drop over subjects, bootstrap interval, share of the full drop.

    Parameters
    ----------
    drops : numpy.ndarray
        ``(N, C + 1)`` from :func:`channel_drops`, one row per scan.
    subjects : list of str
        Subject of each scan (the bootstrap resamples subjects).
    channels : tuple of str
        Channel names, in input order.
    n_bootstrap : int
        Resamples (0: no interval).
    seed : int
        Seed of the resampling.
    """
    frame = pd.DataFrame(drops, columns=[*channels, ALL]).assign(subject=subjects)
    per_subject = frame.groupby("subject", sort=True).mean().to_numpy()
    n = len(per_subject)
    mean = per_subject.mean(axis=0)
    if n_bootstrap and n:
        rng = np.random.default_rng(seed)
        means = per_subject[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1)
        low, high = np.percentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
    else:
        low = high = np.full_like(mean, np.nan)
    full = mean[-1]
    return pd.DataFrame({
        "channel": [*channels, ALL], "mean_drop": mean, "ci_low": low, "ci_high": high,
        "share_of_all": mean / full if full != 0 else np.full_like(mean, np.nan),
        "used": low > 0, "n_subjects": n, "n_scans": len(drops)})


def run_channel_ablation(config: RunConfig, derivs: Derivatives, cohort: Cohort) -> pd.DataFrame | None:
    """Channel ablation of the trained fold models on their test scans; writes the table (several channels only).

    Returns the table, or None when the models read one channel, no fold model exists or no test scan has a
    diagnosis.
    """
    from adheat_app.attribution.runner import heatmap_run

    with heatmap_run(config, derivs, cohort) as run:
        if run is None or len(run.fold_models.channels) < 2:
            return None
        models = run.fold_models
        if not models.templates:
            models.load_training_means(needed=False)
        rows, subjects = [], []
        for k in run.folds:
            own = [a for a in models.assignments if a.fold == k and a.scan.target is not None]
            if not own or k not in models.templates:
                continue
            targets = torch.tensor([int(a.scan.target) for a in own], device=models.device)
            rows.append(channel_drops(models.models[k], models.tensor([a.index for a in own]), targets,
                                      models.templates[k], models.context, config.heatmaps.explain_output))
            subjects += [a.scan.subject for a in own]
        if not rows:
            LOGGER.warning("channel ablation: no fold model has labelled test scans; skipped")
            return None
        table = ablation_table(np.concatenate(rows), subjects, models.channels, config.evaluation.n_bootstrap,
                               config.execution.seed)
        with derivs.lock():
            write_table(group_table(derivs.root, CHANNEL_ABLATION), table, {
                "Description": "drop of the explained output for each test scan's true class when one input channel "
                               "(or all) is replaced by the fold's training mean image, by the fold model that held "
                               "the scan out; mean over subjects",
                "ExplainedOutput": config.heatmaps.explain_output, "Fill": "fold training mean image",
                "Model": config.training.model, "Folds": list(run.folds), "Channels": list(models.channels),
                "Interval": f"{LEVEL:.0%} percentile bootstrap over subjects",
                "NBootstrap": config.evaluation.n_bootstrap,
                "Seed": config.execution.seed,
                "Columns": {"mean_drop": "mean drop over subjects (0: the channel is not used)",
                            "share_of_all": "mean_drop over the drop with every channel replaced",
                            "used": "ci_low > 0"}})
        used = table.loc[table["used"] & (table["channel"] != ALL), "channel"].tolist()
        LOGGER.info("channel ablation: the model uses %s", ", ".join(used) if used else "no single channel alone")
        return table
