"""Writing the heatmaps: file names, the sidecar each map records, reuse of complete maps, native-space copies.

:class:`HeatmapWriter` writes one scan's map of one method as
``desc-<Method>_heatmap.nii.gz`` in template space (float32) with its sidecar,
and for a several-channel input each channel's map as
``desc-<Method><channel>`` (:class:`~adheat_app.layout.MapName`) before their
sum. With ``--native-space`` it writes the same map on the subject's T1w grid
(``space-T1w``) through the saved inverse transform. :meth:`HeatmapWriter.pending`
says which maps are missing or were made with other settings (the values of
:meth:`HeatmapWriter.expected` must match).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.attribution.base import Method
from adheat_app.attribution.fold_models import Assignment, FoldModels
from adheat_app.bids import Derivatives, T1wInput, is_complete, software_versions
from adheat_app.cohort import Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.inputs import channel_paths, input_kind
from adheat_app.io import nifti_image, read_json
from adheat_app.layout import TRAINING_MEAN, MapName, heatmap_path, repeat_root, sidecar_path


def raw_t1w(derivs: Derivatives, scan: Scan) -> T1wInput:
    """The raw T1w input of a scan, from the ``Sources`` of its preprocessed image."""
    sidecar = sidecar_path(scan.image)
    sources = read_json(sidecar).get("Sources", []) if sidecar.is_file() else []
    raw = [s for s in sources if s.startswith("bids:raw:")]
    if not raw:
        raise InputError(f"{sidecar} names no raw T1w in Sources; rerun the participant level (--overwrite) "
                         "to map heatmaps to native space")
    return T1wInput(scan.subject, scan.session, derivs.bids_dir / raw[0].removeprefix("bids:raw:"))


class HeatmapWriter:
    """Writes the heatmaps of the scans that ``models`` explain, each with its sidecar."""

    def __init__(self, config: RunConfig, derivs: Derivatives, models: FoldModels):
        self.config, self.derivs, self.models = config, derivs, models
        #: Where the per-scan maps go: the output folder (repeat 0), else the repeat's folder beside its models.
        self.root = derivs.root if not models.repeat else repeat_root(config.models_dir, config.training.model,
                                                                      models.repeat)

    def heatmap(self, a: Assignment, name: str) -> Path:
        """The template-space heatmap ``desc-<name>`` of one scan."""
        cohort = self.models.cohort
        return heatmap_path(self.root, a.scan, cohort.space, cohort.res_label, name)

    def expected(self, method: Method, a: Assignment) -> dict:
        """Sidecar values that must match for an existing heatmap to be reused."""
        values = {"Method": method.name, "Parameters": json.loads(json.dumps(method.parameters())),
                  "Model": self.config.training.model, "Input": input_kind(self.models.channels),
                  "Fold": a.fold_label, "TargetClass": self.models.target(a),
                  "MixedPrecision": self.models.context.amp,
                  **({"Repeat": self.models.repeat} if self.models.repeat else {})}
        if a.fold is None:
            values["FoldsAveraged"] = list(self.models.folds)
        return values

    def pending(self, method: Method) -> list[Assignment]:
        """Scans whose heatmap of ``method`` is missing or outdated."""
        if self.config.execution.overwrite:
            return list(self.models.assignments)
        return [a for a in self.models.assignments
                if not is_complete(self.heatmap(a, method.name), **self.expected(method, a))]

    def write(self, method: Method, a: Assignment, data: np.ndarray, seconds: float,
              diagnostics: dict | None = None) -> bool:
        """Write one heatmap (and its native-space copy) with its sidecar (plus the method's ``diagnostics``);
        return whether the map is zero everywhere.

        ``data`` is ``(X, Y, Z)``, or ``(C, X, Y, Z)`` for a several-channel input: then each channel's map is
        written as ``desc-<Method><channel>`` and the method's own file holds their sum (written last).
        """
        channels = self.models.channels
        if data.ndim == 4:
            for name, channel in zip(channels, data):
                desc = dataclasses.replace(MapName.parse(method.name), channel=name).desc
                self._write_map(method, a, desc, channel, seconds, diagnostics, {"Channel": name})
            data = data.sum(axis=0)
        return self._write_map(method, a, method.name, data, seconds, diagnostics,
                               {"Channels": list(channels), "ChannelsSummed": len(channels) > 1})

    def _write_map(self, method: Method, a: Assignment, name: str, data: np.ndarray, seconds: float,
                   diagnostics: dict | None, extra: dict) -> bool:
        models, cohort = self.models, self.models.cohort
        img = nifti_image(data.astype(np.float32), models.affine)
        sidecar = {
            **self.expected(method, a),
            "Description": f"{method.name} heatmap of the {self.config.training.model} classifier",
            "PredictedProbability": float(models.probability[a.index]),
            "TargetLabel": cohort.positive_label if models.target(a) else cohort.negative_label,
            "TrueLabel": a.scan.diagnosis,
            "Signed": method.signed,
            "ModelBetterThanChance": models.better_than_chance,
            "ExplainedOutput": method.output,
            "AllZero": not bool(np.any(data)),
            "Seed": self.config.execution.seed,
            "BatchSize": models.context.batch,
            "Device": models.device.type,
            "Software": software_versions(),
            "WallTimeSeconds": round(seconds, 3),
            **(diagnostics or {}),
            **extra,
            "Sources": [*(self.derivs.source_uri(p) for p in channel_paths(a.scan, models.channels)),
                        *(self.derivs.source_uri(models.files[k]) for k in models.models_of(a)),
                        *(self.derivs.source_uri(models.files[k].with_name(TRAINING_MEAN))
                          for k in models.models_of(a) if method.needs_template)],
        }
        self.derivs.write_image(self.heatmap(a, name), img, sidecar)
        if self.config.heatmaps.native_space and not self.models.repeat:
            self.write_native(name, a, img, sidecar)
        return sidecar["AllZero"]

    def write_native(self, name: str, a: Assignment, img: nib.Nifti1Image, sidecar: dict) -> None:
        """The heatmap ``desc-<name>`` on the subject's T1w grid, through the saved inverse transform."""
        from adheat_app.preprocess import to_native

        path = heatmap_path(self.derivs.root, a.scan, "T1w", None, name)
        native = to_native(img, self.derivs, raw_t1w(self.derivs, a.scan))
        self.derivs.write_image(path, native, {
            **sidecar, "Space": "T1w",
            "Sources": [self.derivs.source_uri(self.heatmap(a, name))]})
