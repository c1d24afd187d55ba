"""The training loop of one fold: batches from the volume cache, a step budget, resumable epochs.

:func:`train_fold` fits a model on a fold's training scans with a
class-weighted cross-entropy. The training length is a budget of optimiser
steps (:attr:`TrainSettings.steps`), so a small cohort is trained as long as a
large one instead of getting a few steps per epoch; the budget is rounded up
to whole epochs (:func:`n_epochs`). The learning rate follows
:func:`learning_rate_factor`: a linear warm-up over the first
:data:`WARMUP_FRACTION` of the steps, then a cosine decay to 0 (or constant).
Regularisation: AdamW weight decay, Gaussian noise added to the brain voxels
of every training volume (:attr:`TrainSettings.input_noise`) and optional
shifts. Under strong isotropic input noise the input covariance is close to a
multiple of the identity, so a model's input gradients approach the signal's
pattern rather than noise-cancelling filters (the argument of Haufe et al.
2014 for linear models); after training, the BatchNorm statistics of a
noise-trained model are re-estimated on the clean training scans
(:func:`recalibrate_batchnorm`) and its decision threshold is centred between
the classes on them (:func:`recenter_decision`).

Early stopping is off by default (``patience`` 0: the model of the last epoch
is kept). With ``patience`` > 0 and a validation set, the validation scans are
scored after each epoch, training stops after ``patience`` epochs without a
lower validation loss and the weights of the best epoch are restored. After
every epoch a checkpoint is written; a later call with the same checkpoint and
:class:`TrainSettings` resumes after the last saved epoch. Each epoch reseeds
every generator from :func:`adheat_app.training.device.epoch_seed`, so a
resumed run ends with the same weights as an uninterrupted one.

Batches are read from the float16 memory-mapped input cache
(:func:`adheat_app.inputs.load_inputs`), never from the NIfTI files.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adheat_app.progress import tracked
from adheat_app.training.checkpoint import load_checkpoint, save_checkpoint
from adheat_app.training.device import epoch_seed, seed_everything

LOGGER = logging.getLogger(__name__)

#: Largest random shift of the augmentation, in voxels per axis.
MAX_SHIFT_VOXELS = 2
#: Standard deviation of the augmentation's intensity scale and offset (normalised intensity units).
INTENSITY_JITTER = 0.05
#: Columns of the training curve, in order.
CURVE_COLUMNS = ("train_loss", "val_loss", "val_accuracy", "learning_rate", "seconds")
#: Fraction of the steps over which the learning rate rises linearly from 0 (cosine schedule).
WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes a fold's training (the checkpoint is resumed only when it matches)."""

    epochs: int
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    optimizer: str
    schedule: str
    patience: int
    input_noise: float
    augment: bool
    amp: bool
    seed: int


@dataclass
class FoldResult:
    """Outcome of :func:`train_fold` (the model itself holds the best epoch's weights)."""

    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    early_stopped: bool
    class_weights: list[float]
    seconds: float


@dataclass(frozen=True)
class ScanSet:
    """Scans of one set as rows of the volume cache, with their targets."""

    rows: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def read_batch(volumes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of the input cache ``(N, C, X, Y, Z)`` (:func:`adheat_app.inputs.load_inputs`) as float32.

    The float16 -> float32 conversion is torch's (vectorised, faster than
    numpy's: ``docs/performance.md``): the same values.
    """
    return torch.from_numpy(np.ascontiguousarray(volumes[rows])).float().numpy()


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each volume by up to :data:`MAX_SHIFT_VOXELS` voxels per axis and jitter its intensities.

    The shift wraps around the grid border (background there); the intensity
    jitter ``x * (1 + a) + b`` (``a, b ~ N(0, INTENSITY_JITTER)``) touches only
    non-zero (brain) voxels. No left-right flips: AD atrophy is asymmetric.
    """
    out = np.empty_like(batch)
    for i, volume in enumerate(batch):
        shift = rng.integers(-MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS + 1, size=3)
        shifted = np.roll(volume, tuple(shift), axis=(1, 2, 3))
        scale, offset = rng.normal(0.0, INTENSITY_JITTER, size=2)
        out[i] = np.where(shifted != 0, shifted * (1 + scale) + offset, 0)
    return out


def batches(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order``; a last batch of one joins the previous one (BatchNorm needs two)."""
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [np.concatenate(chunks[-2:])]
    return chunks


def class_weights(targets: np.ndarray) -> torch.Tensor:
    """Cross-entropy weights ``n / (2 n_c)`` from the class balance of the training targets."""
    counts = np.bincount(targets, minlength=2).astype(float)
    return torch.tensor(len(targets) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


def n_epochs(settings: TrainSettings, n_train: int) -> int:
    """Epochs of a fold: ``steps`` rounded up to whole epochs of ``n_train`` scans, or ``epochs`` if ``steps`` is 0."""
    if settings.steps <= 0:
        return settings.epochs
    return math.ceil(settings.steps / len(batches(np.arange(n_train), settings.batch_size)))


def learning_rate_factor(step: int, total: int, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``, as a fraction of the peak rate.

    ``cosine``: linear warm-up over the first :data:`WARMUP_FRACTION` of the
    steps, then ``(1 + cos(pi t)) / 2`` over the rest (``t`` from 0 to 1).
    ``constant``: always 1.
    """
    if schedule == "constant":
        return 1.0
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def add_input_noise(batch: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of standard deviation ``sigma`` to the non-zero (brain) voxels of a batch."""
    generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    x = torch.from_numpy(batch)
    noise = torch.randn(x.shape, generator=generator) * sigma
    return torch.where(x != 0, x + noise, x).numpy()


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """``adamw`` (decoupled weight decay) or ``adam`` (L2 penalty, as the papers' Keras/PyTorch code)."""
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[settings.optimizer]
    return cls(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, volumes: np.ndarray, rows: np.ndarray, device: torch.device,
                   batch_size: int, amp: bool = False) -> torch.Tensor:
    """Logits ``(N, 2)`` (float32, on CPU) of the cached volumes ``rows``, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        x = torch.from_numpy(read_batch(volumes, rows[start:start + batch_size])).to(device)
        with _autocast(device, amp):
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 2))


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 criterion: nn.Module, volumes: np.ndarray, train: ScanSet, settings: TrainSettings,
                 device: torch.device, rng: np.random.Generator, epoch: int, total_epochs: int) -> float:
    """One pass over the training scans in a random order; returns the mean training loss."""
    model.train()
    total = 0.0
    chunks = batches(rng.permutation(len(train)), settings.batch_size)
    for i, idx in enumerate(chunks):
        factor = learning_rate_factor(epoch * len(chunks) + i, total_epochs * len(chunks), settings.schedule)
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * factor
        batch = read_batch(volumes, train.rows[idx])
        if settings.augment:
            batch = augment(batch, rng)
        if settings.input_noise > 0:
            batch = add_input_noise(batch, settings.input_noise, rng)
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        y = torch.from_numpy(train.targets[idx]).to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, settings.amp):
            loss = criterion(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(idx)
    return total / len(train)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, volumes: np.ndarray, rows: np.ndarray, device: torch.device,
                          batch_size: int) -> None:
    """Re-estimate every BatchNorm's running mean and variance on clean (noise-free) scans.

    A model trained with input noise keeps running statistics of noisy inputs;
    scored on clean scans its normalised activations are then off scale and its
    decision threshold shifts. The statistics are replaced by the average over
    ``rows`` of the cache (each batch weighted equally, ``momentum=None``);
    weights are unchanged and the model ends in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not len(rows):
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for idx in batches(np.arange(len(rows)), batch_size):
        model(torch.from_numpy(read_batch(volumes, rows[idx])).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def recenter_decision(model: nn.Module, volumes: np.ndarray, train: ScanSet, device: torch.device,
                      batch_size: int) -> float:
    """Move the decision threshold half-way between the classes' mean logit difference on the training scans.

    Input noise shifts a model's logits on clean scans, so that a model ranking
    every test scan right (ROC AUC 1) could call them all one class. The bias of
    the last ``Linear`` layer is shifted so that ``z_1 - z_0`` is 0 half-way
    between its means over the clean training scans of each class (weights and
    the ranking of scans are unchanged).

    Returns
    -------
    float
        The shift subtracted from ``z_1 - z_0``.
    """
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    logits = predict_logits(model, volumes, train.rows, device, batch_size)
    difference = (logits[:, 1] - logits[:, 0]).numpy()
    shift = 0.5 * (difference[train.targets == 1].mean() + difference[train.targets == 0].mean())
    last.bias[1] -= float(shift) / 2
    last.bias[0] += float(shift) / 2
    return float(shift)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_fold(model: nn.Module, volumes: np.ndarray, train: ScanSet, val: ScanSet, settings: TrainSettings,
               fold: int, device: torch.device, checkpoint: Path, key: str, label: str = "") -> FoldResult:
    """Train ``model`` on ``train`` (early stopping on ``val`` when ``patience`` > 0); resume from ``checkpoint``.

    Parameters
    ----------
    model : nn.Module
        Freshly built (initialised from ``epoch_seed(seed, fold, 0)``) and on ``device``.
    volumes : numpy.ndarray
        The input cache ``(N, C, X, Y, Z)``; ``train.rows``/``val.rows`` index it.
    train, val : ScanSet
        Training and validation scans (``val`` may be empty; it is then
        neither scored nor used for stopping).
    settings : TrainSettings
        Optimiser, schedule, regularisation and stopping settings.
    fold : int
        Fold index (part of every epoch's seed).
    checkpoint : Path
        Per-epoch checkpoint file (resumed when it exists and records ``key``).
    key : str
        Identity of this fold's training (settings, split and data); a
        checkpoint with another key is ignored and overwritten.
    label : str
        Prefix of the progress messages (e.g. ``"fold 2/5"``).

    Returns
    -------
    FoldResult
        Learning curves and stopping facts; ``model`` ends in eval mode with
        the weights of the last epoch, or with early stopping of the epoch of
        lowest validation loss.
    """
    weights = class_weights(train.targets)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device))
    optimizer = make_optimizer(model, settings)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.amp and device.type == "cuda")
    stopping = settings.patience > 0 and len(val) > 0
    total_epochs = n_epochs(settings, len(train))
    state = _start_state(model, optimizer, scaler, checkpoint, key, device, label)
    start = time.perf_counter()
    epochs = range(state["epoch"], total_epochs)
    for epoch in tracked(epochs, label, "epoch"):
        if stopping and state["bad_epochs"] >= settings.patience:
            break
        tic = time.perf_counter()
        rng = seed_everything(epoch_seed(settings.seed, fold, epoch + 1))
        train_loss = _train_epoch(model, optimizer, scaler, criterion, volumes, train, settings, device, rng,
                                  epoch, total_epochs)
        val_loss, val_accuracy = _validate(model, volumes, val, weights, settings, device)
        improved = val_loss < state["best_val_loss"] if stopping else True
        if improved:
            state.update(best_epoch=epoch + 1, best_val_loss=val_loss, bad_epochs=0,
                         best_model=_copy_state(model) if stopping else None)
        else:
            state["bad_epochs"] += 1
        values = (train_loss, val_loss, val_accuracy, optimizer.param_groups[0]["lr"], time.perf_counter() - tic)
        for name, value in zip(CURVE_COLUMNS, values):
            state["history"][name].append(value)
        state.update(epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     scaler=scaler.state_dict())
        save_checkpoint(checkpoint, state)
        validation = f", val loss {val_loss:.4f}, val accuracy {val_accuracy:.3f}" if len(val) else ""
        LOGGER.info("%s epoch %d/%d: train loss %.4f%s%s", label, epoch + 1, total_epochs, train_loss, validation,
                    " (best)" if stopping and improved else "")
    _finish(model, volumes, train, settings, device, state["best_model"] if stopping else None, label)
    return FoldResult(history=state["history"], best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                      early_stopped=state["epoch"] < total_epochs, class_weights=weights.tolist(),
                      seconds=time.perf_counter() - start)


def _start_state(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 checkpoint: Path, key: str, device: torch.device, label: str) -> dict:
    """The training state to start from: the ``checkpoint`` of this ``key`` (loaded into ``model``, ``optimizer``
    and ``scaler``), else a fresh one."""
    state = load_checkpoint(checkpoint, device)
    if state is not None and state["key"] != key:
        LOGGER.info("%s: ignoring checkpoint %s of other settings or data", label, checkpoint)
        state = None
    if state is None:
        return {"key": key, "epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "bad_epochs": 0,
                "history": {c: [] for c in CURVE_COLUMNS}, "best_model": _copy_state(model)}
    LOGGER.info("%s: resuming after epoch %d from %s", label, state["epoch"], checkpoint)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return state


def _validate(model: nn.Module, volumes: np.ndarray, val: ScanSet, weights: torch.Tensor, settings: TrainSettings,
              device: torch.device) -> tuple[float, float]:
    """Class-weighted loss and accuracy on the validation scans (NaN without any)."""
    if not len(val):
        return math.nan, math.nan
    targets = torch.from_numpy(val.targets)
    logits = predict_logits(model, volumes, val.rows, device, settings.batch_size, settings.amp)
    return (float(nn.functional.cross_entropy(logits, targets, weight=weights)),
            float((logits.argmax(1) == targets).float().mean()))


def _finish(model: nn.Module, volumes: np.ndarray, train: ScanSet, settings: TrainSettings, device: torch.device,
            best: dict | None, label: str) -> None:
    """Leave ``model`` in eval mode with the ``best`` weights (early stopping; None: the last epoch's), its
    BatchNorm statistics and decision threshold re-estimated on clean training scans after input noise."""
    if best is not None:
        model.load_state_dict(best)
    if settings.input_noise > 0:
        recalibrate_batchnorm(model, volumes, train.rows, device, settings.batch_size)
        shift = recenter_decision(model, volumes, train, device, settings.batch_size)
        LOGGER.info("%s: BatchNorm statistics of clean training scans; decision threshold moved by %.3f", label,
                    shift)
    model.eval()
