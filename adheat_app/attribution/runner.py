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
the fold's training scans. :func:`heatmap_run` sets up the models and data for
the heatmaps and for the group level's sanity check (:mod:`.sanity`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Method, MethodContext, batch_size, channels_last, class_probability
from adheat_app.attribution.catalog import selected_methods
from adheat_app.attribution.references import TRAINING_MEAN, training_mean
from adheat_app.bids import Derivatives, T1wInput, is_complete, software_versions
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.inputs import INPUTS, card_channels, channel_paths, load_inputs
from adheat_app.io import nifti_image, read_json
from adheat_app.layout import heatmap_path, repeat_root, sidecar_path, trained_folds
from adheat_app.templates import parse_resolution

LOGGER = logging.getLogger(__name__)

#: Scans held in memory at once, in multiples of the pass size.
CHUNK_PASSES = 4


def model_channels(cards: dict[int, dict]) -> tuple[str, ...]:
    """The input channels of the fold models (their model cards' ``Input.Channels``; intensity before it existed).

    Raises
    ------
    InputError
        When the fold models were trained on different inputs.
    """
    found = {k: card_channels(card) for k, card in cards.items()}
    if len(set(found.values())) > 1:
        raise InputError(f"the fold models were trained on different inputs ({found}); retrain them with one "
                         "--input (--overwrite)")
    return next(iter(found.values()))


def raw_t1w(derivs: Derivatives, scan: Scan) -> T1wInput:
    """The raw T1w input of a scan, from the ``Sources`` of its preprocessed image."""
    sidecar = sidecar_path(scan.image)
    sources = read_json(sidecar).get("Sources", []) if sidecar.is_file() else []
    raw = [s for s in sources if s.startswith("bids:raw:")]
    if not raw:
        raise InputError(f"{sidecar} names no raw T1w in Sources; rerun the participant level (--overwrite) "
                         "to map heatmaps to native space")
    return T1wInput(scan.subject, scan.session, derivs.bids_dir / raw[0].removeprefix("bids:raw:"))


@dataclass
class Assignment:
    """Which fold model(s) explain a scan."""

    scan: Scan
    index: int
    fold: int | None

    @property
    def fold_label(self) -> int | str:
        """The sidecar's ``Fold``: the fold index, or ``"mean"``."""
        return "mean" if self.fold is None else self.fold


def assign_folds(config: RunConfig, cohort: Cohort, folds: list[int], repeat: int = 0) -> list[Assignment]:
    """Each scan's out-of-fold model of repeat ``repeat`` (``fold=None``: in no test set, mean of all folds)."""
    from adheat_app.training import fold_dir, read_split

    tested: dict[tuple[str, str | None], int] = {}
    for k in folds:
        split = read_split(fold_dir(config, k, repeat))
        for row in split[split["set"] == "test"].itertuples():
            session = None if not isinstance(row.session, str) or row.session in ("", "n/a") else row.session
            tested[(str(row.subject), session)] = k
    return [Assignment(scan, i, tested.get((scan.subject, scan.session))) for i, scan in enumerate(cohort.scans)]


class HeatmapRun:
    """State of one :func:`run_heatmaps` call: models, predictions, targets, pending work."""

    def __init__(self, config: RunConfig, derivs: Derivatives, cohort: Cohort, folds: list[int], repeat: int = 0):
        from adheat_app.training import fold_dir, load_fold_model, resolve_device
        from adheat_app.training.runner import read_verdict

        self.config, self.derivs, self.cohort, self.folds, self.repeat = config, derivs, cohort, folds, repeat
        #: Where the per-scan maps go: the output folder (repeat 0), else the repeat's folder under the models.
        self.root = derivs.root if repeat == 0 else repeat_root(config.models_dir, config.training.model, repeat)
        hm = config.heatmaps
        self.assignments = assign_folds(config, cohort, folds, repeat)
        self.device = resolve_device(config)
        self.models, cards = {}, {}
        for k in folds:
            model, cards[k] = load_fold_model(fold_dir(config, k, repeat), self.device)
            for param in model.parameters():
                param.requires_grad_(False)
            self.models[k] = channels_last(model.eval())
        #: Input channels of the models (their model cards: heatmaps always see what the models were trained on).
        self.channels = model_channels(cards)
        self.input = next(kind for kind, names in INPUTS.items() if names == self.channels)
        self.volumes = load_inputs(cohort.scans, self.input, config.work_dir)
        shape = tuple(self.volumes.shape[2:])
        self.context = MethodContext(parse_resolution(cohort.res_label), cohort.space,
                                     batch_size(hm, config.execution.mem_gb, shape), config.execution.seed,
                                     self.device, config.training.amp)
        self.methods: list[Method] = [METHODS[n](hm, self.context) for n in selected_methods(hm.methods)]
        self.model_files = {k: fold_dir(config, k, repeat) / "model.pt" for k in folds}
        verdict = read_verdict(config.models_dir, config.training.model)
        self.better_than_chance = None if verdict is None else bool(verdict["BetterThanChance"])
        if self.better_than_chance is False:
            LOGGER.warning("%s is not better than chance (models/%s/verdict.json): its heatmaps are written, but "
                           "they explain a model that did not learn to separate the classes",
                           config.training.model, config.training.model)
        self.affine = nib.load(cohort.scans[0].image).affine
        self.all_zero = 0
        self.templates = self._training_means(any(m.needs_template for m in self.methods))
        self.probability = self._predict()

    def _training_means(self, needed: bool) -> dict[int, torch.Tensor]:
        """Each fold's training mean image (:func:`~.references.training_mean`), on the device.

        Written whenever this run holds the fold's training scans (the group
        level), so later participant-level runs find it; required only when a
        method uses it.
        """
        from adheat_app.training import fold_dir

        means = {}
        for k in self.folds:
            try:
                means[k] = torch.from_numpy(training_mean(fold_dir(self.config, k, self.repeat), self.cohort,
                                                          self.volumes)).to(self.device)
            except InputError:
                if needed:
                    raise
        return means

    def tensor(self, indices: list[int]) -> torch.Tensor:
        """Scans' inputs as float32 ``(N, C, X, Y, Z)`` on the device (cached float16 -> float32)."""
        from adheat_app.training.loop import read_batch

        return torch.from_numpy(read_batch(self.volumes, np.asarray(indices))).to(self.device)

    def models_of(self, a: Assignment) -> list[int]:
        """Fold models that explain a scan."""
        return self.folds if a.fold is None else [a.fold]

    def _predict(self) -> np.ndarray:
        """Probability of the positive class of every scan from its model(s) (mean over folds)."""
        out = np.zeros(len(self.assignments))
        for k in self.folds:
            indices = [a.index for a in self.assignments if k in self.models_of(a)]
            for start in range(0, len(indices), self.context.batch):
                part = indices[start:start + self.context.batch]
                positive = torch.ones(len(part), dtype=torch.int64, device=self.device)
                prob = class_probability(self.models[k], self.tensor(part), positive, self.context)
                share = np.array([len(self.models_of(self.assignments[i])) for i in part])
                out[part] += prob.cpu().numpy().astype(np.float64) / share
        return out

    def target(self, a: Assignment) -> int:
        """Class explained for a scan (``--target``; the predicted class where the true one is unknown)."""
        predicted = int(self.probability[a.index] >= 0.5)
        choice = self.config.heatmaps.target
        if choice == "positive":
            return 1
        if choice == "true" and a.scan.target is not None:
            return int(a.scan.target)
        return predicted

    def heatmap(self, a: Assignment, name: str) -> Path:
        """The template-space heatmap ``desc-<name>`` of one scan."""
        return heatmap_path(self.root, a.scan, self.cohort.space, self.cohort.res_label, name)

    def expected(self, method: Method, a: Assignment) -> dict:
        """Sidecar values that must match for an existing heatmap to be reused."""
        values = {"Method": method.name, "Parameters": json.loads(json.dumps(method.parameters())),
                  "Model": self.config.training.model, "Input": self.input, "Fold": a.fold_label,
                  "TargetClass": self.target(a), "MixedPrecision": self.context.amp,
                  **({"Repeat": self.repeat} if self.repeat else {})}
        if a.fold is None:
            values["FoldsAveraged"] = list(self.folds)
        return values

    def pending(self, method: Method) -> list[Assignment]:
        """Scans whose heatmap of ``method`` is missing or outdated."""
        if self.config.execution.overwrite:
            return list(self.assignments)
        return [a for a in self.assignments
                if not is_complete(self.heatmap(a, method.name),
                                   **self.expected(method, a))]

    def compute(self, method: Method, model: nn.Module, fold: int, todo: list[Assignment]
                ) -> tuple[np.ndarray, float]:
        """Maps of ``todo`` (at most one chunk of scans) by the model of ``fold``, and the seconds spent."""
        start = time.perf_counter()
        targets = torch.tensor([self.target(a) for a in todo], dtype=torch.int64, device=self.device)
        x = self.tensor([a.index for a in todo])
        maps = method.attribute(model, x, targets, [a.scan.key for a in todo], template=self.templates.get(fold))
        return maps.cpu().numpy(), time.perf_counter() - start

    def write(self, method: Method, a: Assignment, data: np.ndarray, seconds: float,
              diagnostics: dict | None = None) -> None:
        """Write one heatmap (and its native-space copy) with its sidecar (plus the method's ``diagnostics``).

        ``data`` is ``(X, Y, Z)``, or ``(C, X, Y, Z)`` for a several-channel input: then each channel's map is
        written as ``desc-<Method><channel>`` and the method's own file holds their sum (written last).
        """
        if data.ndim == 4:
            for name, channel in zip(self.channels, data):
                self._write_map(method, a, f"{method.name}{name}", channel, seconds, diagnostics, {"Channel": name})
            data = data.sum(axis=0)
        self._write_map(method, a, method.name, data, seconds, diagnostics,
                        {"Channels": list(self.channels), "ChannelsSummed": len(self.channels) > 1})

    def _write_map(self, method: Method, a: Assignment, name: str, data: np.ndarray, seconds: float,
                   diagnostics: dict | None, extra: dict) -> None:
        path = self.heatmap(a, name)
        img = nifti_image(data.astype(np.float32), self.affine)
        sidecar = {
            **self.expected(method, a),
            "Description": f"{method.name} heatmap of the {self.config.training.model} classifier",
            "PredictedProbability": float(self.probability[a.index]),
            "TargetLabel": self.cohort.positive_label if self.target(a) else self.cohort.negative_label,
            "TrueLabel": a.scan.diagnosis,
            "Signed": method.signed,
            "ModelBetterThanChance": self.better_than_chance,
            "ExplainedOutput": method.output,
            "AllZero": not bool(np.any(data)),
            "Seed": self.config.execution.seed,
            "BatchSize": self.context.batch,
            "Device": self.device.type,
            "Software": software_versions(),
            "WallTimeSeconds": round(seconds, 3),
            **(diagnostics or {}),
            **extra,
            "Sources": [*(self.derivs.source_uri(p) for p in channel_paths(a.scan, self.input)),
                        *(self.derivs.source_uri(self.model_files[k]) for k in self.models_of(a)),
                        *(self.derivs.source_uri(self.model_files[k].with_name(TRAINING_MEAN))
                          for k in self.models_of(a) if method.needs_template)],
        }
        self.all_zero += sidecar["AllZero"] and name == method.name
        self.derivs.write_image(path, img, sidecar)
        if self.config.heatmaps.native_space and not self.repeat:
            self.write_native(name, a, img, sidecar)

    def write_native(self, name: str, a: Assignment, img: nib.Nifti1Image, sidecar: dict) -> None:
        """The heatmap ``desc-<name>`` on the subject's T1w grid, through the saved inverse transform."""
        from adheat_app.preprocess import to_native

        path = heatmap_path(self.derivs.root, a.scan, "T1w", None, name)
        native = to_native(img, self.derivs, raw_t1w(self.derivs, a.scan))
        self.derivs.write_image(path, native, {
            **sidecar, "Space": "T1w",
            "Sources": [self.derivs.source_uri(self.heatmap(a, name))]})

    def run_method(self, method: Method) -> None:
        """Every pending heatmap of one method: out-of-fold scans, then fold means."""
        todo = self.pending(method)
        if not todo:
            LOGGER.info("%s: every heatmap exists (skipped; --overwrite recomputes)", method.name)
            return
        LOGGER.info("%s: %d scan(s) to explain (batch %d, %s)", method.name, len(todo), self.context.batch,
                    self.device)
        chunk = self.context.batch * CHUNK_PASSES
        self.all_zero = 0
        example = self.tensor([todo[0].index])
        models = {k: method.prepare(self.models[k], example) for k in self.folds}
        for k in self.folds:
            own = [a for a in todo if a.fold == k]
            for first in range(0, len(own), chunk):
                part = own[first:first + chunk]
                maps, seconds = self.compute(method, models[k], k, part)
                for a, data in zip(part, maps):
                    self.write(method, a, data, seconds / len(part), method.diagnostics.pop(a.scan.key, None))
                    LOGGER.info("%s %s: fold %d, %.1f s", method.name, a.scan.key, k, seconds / len(part))
        unseen = [a for a in todo if a.fold is None]
        for first in range(0, len(unseen), chunk):
            part = unseen[first:first + chunk]
            total, seconds, worst = 0.0, 0.0, {}
            for k in self.folds:
                maps, spent = self.compute(method, models[k], k, part)
                total, seconds = total + maps, seconds + spent
                for a in part:  # over the fold models: the largest of each value
                    seen = worst.setdefault(a.scan.key, {})
                    for name, value in method.diagnostics.pop(a.scan.key, {}).items():
                        seen[name] = max(value, seen.get(name, value))
            for a, data in zip(part, total / len(self.folds)):
                self.write(method, a, data, seconds / len(part), worst.get(a.scan.key))
                LOGGER.info("%s %s: mean of %d folds, %.1f s", method.name, a.scan.key, len(self.folds),
                            seconds / len(part))
        if self.all_zero:
            LOGGER.warning("%s: %d of %d maps are zero everywhere (AllZero in their sidecars; the group means "
                           "leave them out)%s", method.name, self.all_zero, len(todo), method.all_zero_reason)


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
    with deterministic(run.device, config.execution.omp_nthreads, exact=True), reuse_cpu_memory(run.device):
        yield run


def run_heatmaps(config: RunConfig, derivs: Derivatives, cohort: Cohort, repeat: int = 0) -> None:
    """Derive every selected method's heatmap of every scan of ``cohort`` (see the module docstring); ``repeat``
    > 0: from that repeat's fold models, into :func:`~adheat_app.layout.repeat_root` (template space only).

    Does nothing (with a warning) when no trained fold model of ``--model`` exists.
    """
    with heatmap_run(config, derivs, cohort, repeat) as run:
        for method in run.methods if run else ():
            run.run_method(method)
