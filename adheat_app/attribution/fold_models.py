"""The trained fold models behind the heatmaps, and what they say about each scan of a cohort.

:class:`FoldModels` loads every trained fold model of ``--model`` once (eval
mode, parameters frozen, on the device), reads their input channels from the
model cards (:func:`model_channels`: heatmaps always see what the models were
trained on), loads those inputs, and assigns each scan its out-of-fold model
(:func:`assign_folds`: the fold whose ``split.tsv`` lists the scan as a test
scan; a scan in no fold's test set is explained by the mean over every fold
model). It predicts each scan's probability (mean over its models), picks the
explained class (``--target``) and holds each fold's training mean image (the
``template`` baseline and fill, :mod:`.references`), written whenever the run
holds the fold's training scans.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from adheat_app.attribution.base import MethodContext, batch_size, channels_last, class_probability
from adheat_app.attribution.references import training_mean
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.inputs import card_channels, load_inputs
from adheat_app.layout import MODEL_WEIGHTS
from adheat_app.templates import parse_resolution

LOGGER = logging.getLogger(__name__)


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


class FoldModels:
    """The fold models of ``--model``, the cohort's inputs they read, and each scan's model, probability and class.

    Parameters
    ----------
    config : RunConfig
        Run configuration (``--model``, models folder, ``--target``, device, seed, memory).
    cohort : Cohort
        The scans to explain.
    folds : list of int
        The trained folds (:func:`adheat_app.layout.trained_folds`).
    repeat : int
        The repeat of ``--repeats`` whose fold models these are (0: the plain run).
    """

    def __init__(self, config: RunConfig, cohort: Cohort, folds: list[int], repeat: int = 0):
        from adheat_app.training import fold_dir, load_fold_model, resolve_device
        from adheat_app.training.runner import read_verdict

        self.config, self.cohort, self.folds, self.repeat = config, cohort, folds, repeat
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
        self.volumes = load_inputs(cohort.scans, self.channels, config.work_dir)
        shape = tuple(self.volumes.shape[2:])
        self.context = MethodContext(parse_resolution(cohort.res_label), cohort.space,
                                     batch_size(config.heatmaps, config.execution.mem_gb, shape),
                                     config.execution.seed, self.device, config.training.amp)
        self.files = {k: fold_dir(config, k, repeat) / MODEL_WEIGHTS for k in folds}
        verdict = read_verdict(config.models_dir, config.training.model)
        self.better_than_chance = None if verdict is None else bool(verdict["BetterThanChance"])
        if self.better_than_chance is False:
            LOGGER.warning("%s is not better than chance (models/%s/verdict.json): its heatmaps are written, but "
                           "they explain a model that did not learn to separate the classes",
                           config.training.model, config.training.model)
        self.affine = nib.load(cohort.scans[0].image).affine
        #: Each fold's training mean image on the device (:meth:`load_training_means`).
        self.templates: dict[int, torch.Tensor] = {}
        self.probability = self._predict()

    def load_training_means(self, needed: bool) -> None:
        """Each fold's training mean image (:func:`~.references.training_mean`), on the device, into
        :attr:`templates`.

        Written whenever this run holds the fold's training scans (the group
        level), so later participant-level runs find it; required (an error
        when it cannot be made) only when ``needed``: a method uses it.
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
        self.templates = means

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
