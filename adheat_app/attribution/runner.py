"""Per-subject heatmaps from the cross-validated models: out-of-fold, batched, resumable.

:func:`run_heatmaps` is the one implementation behind both levels: the
participant level calls it for the subjects it preprocessed, the group level
for the whole cohort, so both write identical files (same cached inputs,
fixed-shape padded passes, per-scan seeds; see :mod:`.base`).

Which model explains a scan: the fold model whose ``split.tsv`` lists the scan
in its ``test`` set (out-of-fold, as Wang et al.); a scan in no fold's test set
(new data, MCI) gets the mean of the maps of every fold model (``Fold:
"mean"``). Each fold model is loaded once. Heatmaps that exist with the same
method, parameters, model and fold(s) are skipped unless ``--overwrite``.

Outputs per scan and method: ``desc-<Method>_heatmap.nii.gz`` in template
space at the model's resolution (float32) with a sidecar, and with
``--native-space`` the same map on the subject's T1w grid (``space-T1w``).
With ``--repeats R`` each repeat ``r`` > 0 gets its own out-of-fold maps from
its fold models, named as above under ``models/<model>/repeat-<r>/``
(:func:`adheat_app.layout.repeat_root`; sidecars add ``Repeat``).
Every sidecar records the explained output (``ExplainedOutput``,
``--explain-output``), whether forward-only passes (predictions, occlusion
drops) ran in mixed precision (``MixedPrecision``: on CUDA unless
``--no-amp``; a change recomputes the maps) and whether the map is zero everywhere (``AllZero``;
such maps are counted in a warning per method, and the group means leave
them out), and ``ModelBetterThanChance``: the cross-validated model's verdict
against chance (``models/<model>/verdict.json``; null before it exists). IG
sidecars add the completeness error (``IGConvergenceDelta``,
``IGConvergenceDeltaRelative``; a fold mean records the largest over its
fold models). Each fold's training mean image (the ``template`` baseline and
fill, :mod:`.references`) is written next to its model whenever the run holds
the fold's training scans.

The work is split in two: :class:`~.fold_models.FoldModels` (the fold models,
their inputs, each scan's model, probability and explained class) and
:class:`~.writer.HeatmapWriter` (file names, sidecars, reuse, native space);
:class:`HeatmapRun` joins them and runs each method, recording the per-scan
values a method returns beside its maps (:meth:`.base.Method.attribution`).
:func:`heatmap_run` sets up the models and data for the heatmaps and for the
group level's sanity check (:mod:`.sanity`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Attribution, Method
from adheat_app.attribution.catalog import selected_methods
from adheat_app.attribution.fold_models import Assignment, FoldModels
from adheat_app.attribution.writer import HeatmapWriter
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.layout import trained_folds
from adheat_app.progress import tracked

LOGGER = logging.getLogger(__name__)

#: Scans held in memory at once, in multiples of the pass size.
CHUNK_PASSES = 4


class HeatmapRun:
    """One :func:`run_heatmaps` call: the fold models, the writer and the selected methods."""

    def __init__(self, config: RunConfig, derivs: Derivatives, cohort: Cohort, folds: list[int], repeat: int = 0):
        self.config, self.derivs, self.folds = config, derivs, folds
        self.fold_models = FoldModels(config, cohort, folds, repeat)
        self.methods: list[Method] = [METHODS[n](config.heatmaps, self.fold_models.context)
                                      for n in selected_methods(config.heatmaps.methods)]
        self.fold_models.load_training_means(any(m.needs_template for m in self.methods))
        self.writer = HeatmapWriter(config, derivs, self.fold_models)

    def compute(self, method: Method, model: nn.Module, fold: int, todo: list[Assignment]
                ) -> tuple[Attribution, float]:
        """Maps of ``todo`` (at most one chunk of scans) by the model of ``fold`` with the method's per-scan
        values, as numpy maps, and the seconds spent."""
        models = self.fold_models
        start = time.perf_counter()
        targets = torch.tensor([models.target(a) for a in todo], dtype=torch.int64, device=models.device)
        x = models.tensor([a.index for a in todo])
        maps, diagnostics = method.attribution(model, x, targets, [a.scan.key for a in todo],
                                               template=models.templates.get(fold))
        return Attribution(maps.cpu().numpy(), diagnostics), time.perf_counter() - start

    def run_method(self, method: Method) -> None:
        """Every pending heatmap of one method: out-of-fold scans, then fold means."""
        todo = self.writer.pending(method)
        if not todo:
            LOGGER.info("%s: every heatmap exists (skipped; --overwrite recomputes)", method.name)
            return
        models = self.fold_models
        LOGGER.info("%s: %d scan(s) to explain (batch %d, %s)", method.name, len(todo), models.context.batch,
                    models.device)
        example = models.tensor([todo[0].index])
        prepared = {k: method.prepare(models.models[k], example) for k in self.folds}
        all_zero = self._out_of_fold(method, prepared, todo) + self._fold_means(method, prepared, todo)
        if all_zero:
            LOGGER.warning("%s: %d of %d maps are zero everywhere (AllZero in their sidecars; the group means "
                           "leave them out)%s", method.name, all_zero, len(todo), method.all_zero_reason)

    def _chunks(self, todo: list[Assignment], desc: str) -> Iterator[list[Assignment]]:
        """``todo`` in batches of :data:`CHUNK_PASSES` passes, with a progress bar named ``desc`` on a terminal."""
        chunk = self.fold_models.context.batch * CHUNK_PASSES
        yield from tracked([todo[first:first + chunk] for first in range(0, len(todo), chunk)], desc, "batch")

    def _out_of_fold(self, method: Method, prepared: dict[int, nn.Module], todo: list[Assignment]) -> int:
        """Maps of the scans a fold model held out, by that model; return how many are zero everywhere."""
        all_zero = 0
        for k in self.folds:
            for part in self._chunks([a for a in todo if a.fold == k], f"{method.name} fold {k}"):
                (maps, diagnostics), seconds = self.compute(method, prepared[k], k, part)
                for a, data in zip(part, maps):
                    all_zero += self.writer.write(method, a, data, seconds / len(part),
                                                  diagnostics.get(a.scan.key))
                    LOGGER.info("%s %s: fold %d, %.1f s", method.name, a.scan.key, k, seconds / len(part))
        return all_zero

    def _fold_means(self, method: Method, prepared: dict[int, nn.Module], todo: list[Assignment]) -> int:
        """Mean maps over every fold model of the scans in no test set (the largest of each per-scan value);
        return how many are zero everywhere."""
        all_zero = 0
        for part in self._chunks([a for a in todo if a.fold is None], f"{method.name} fold means"):
            total, seconds, worst = 0.0, 0.0, {}
            for k in self.folds:
                (maps, diagnostics), spent = self.compute(method, prepared[k], k, part)
                total, seconds = total + maps, seconds + spent
                for a in part:  # over the fold models: the largest of each value
                    seen = worst.setdefault(a.scan.key, {})
                    for name, value in diagnostics.get(a.scan.key, {}).items():
                        seen[name] = max(value, seen.get(name, value))
            for a, data in zip(part, total / len(self.folds)):
                all_zero += self.writer.write(method, a, data, seconds / len(part), worst.get(a.scan.key))
                LOGGER.info("%s %s: mean of %d folds, %.1f s", method.name, a.scan.key, len(self.folds),
                            seconds / len(part))
        return all_zero


@contextlib.contextmanager
def heatmap_run(config: RunConfig, derivs: Derivatives, cohort: Cohort, repeat: int = 0
                ) -> Iterator[HeatmapRun | None]:
    """A :class:`HeatmapRun` of every trained fold model of ``--model`` (of repeat ``repeat``), computing
    deterministically in the block.

    Yields None (with a warning) when no trained fold model exists.
    """
    from adheat_app.memory import reuse_cpu_memory
    from adheat_app.training.device import deterministic

    folds = trained_folds(config.models_dir, config.training.model, repeat)
    if not folds:
        LOGGER.warning("no trained %s fold model in %s: no heatmaps", config.training.model,
                       config.models_dir / config.training.model)
        yield None
        return
    run = HeatmapRun(config, derivs, cohort, folds, repeat)
    device = run.fold_models.device
    with deterministic(device, config.execution.omp_nthreads, exact=True), reuse_cpu_memory(device):
        yield run


def run_heatmaps(config: RunConfig, derivs: Derivatives, cohort: Cohort, repeat: int = 0) -> None:
    """Derive every selected method's heatmap of every scan of ``cohort`` (see the module docstring); ``repeat``
    > 0: from that repeat's fold models, into :func:`~adheat_app.layout.repeat_root` (template space only).

    Does nothing (with a warning) when no trained fold model of ``--model`` exists.
    """
    with heatmap_run(config, derivs, cohort, repeat) as run:
        for method in run.methods if run else ():
            run.run_method(method)
