"""Occlusion (Zeiler & Fergus 2014, as Rieke et al. 2018): a zero cube slides over the scan.

Relevance of a voxel = drop of the explained output (``--explain-output``,
:mod:`.output`; Rieke et al. used the class probability) when a patch
covering it (in one input channel at a time: one map per channel) is replaced
by the fill (``--occlusion-fill``, :mod:`.references`:
``zero`` or ``template``, the fold's training mean image), averaged over the patches that cover it (captum's
:class:`~captum.attr.Occlusion` convention, so the results are equal), then
clipped at 0 as Rieke et al. do. Patch edge and stride are options in mm
(Rieke et al.: 40 mm at 1 mm), converted to voxels of the analysis grid.

:class:`Ablation` is the engine shared with brain-area occlusion
(:mod:`.area_occlusion`): every (scan, occluded set) pair is one row, rows of
all scans are packed into padded passes run under ``torch.inference_mode``
(and autocast on CUDA). On the CPU the model is split at its input
convolution (:func:`~adheat_app.attribution.canonize.split_on_cpu`): that
layer's output is computed once per scan, and each row is that output minus
the convolution (without bias) of the occluded voxels, computed on their
bounding box only: equal to convolving the occluded scan (up to float
rounding), without the convolution that was half the time of every pass.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Method, class_logits, padded_batches, per_channel
from adheat_app.attribution.canonize import InputSplit, split_on_cpu
from adheat_app.attribution.inputconv import is_local_single_channel
from adheat_app.attribution.output import output_drop

Occluded = tuple[slice, ...] | torch.Tensor


class Ablation(Method):
    """Relevance = drop of the explained output when a set of voxels is filled, painted into the set."""

    signed = False
    slow = True
    uses = ("occlusion_fill",)

    @property
    def needs_template(self) -> bool:
        """Whether the fill is the fold's training mean."""
        return self.options.occlusion_fill == "template"

    def fill(self, template: torch.Tensor | None) -> torch.Tensor | None:
        """The fill image (``(C, X, Y, Z)`` or ``(X, Y, Z)``), or None for zeros."""
        if self.options.occlusion_fill == "zero":
            return None
        if template is None:
            raise ValueError("--occlusion-fill template needs the fold's training mean image")
        return template

    @abstractmethod
    def occluded_sets(self, shape: tuple[int, int, int], device: torch.device) -> list[Occluded]:
        """The voxel sets occluded one at a time: index tuples or boolean masks of ``shape``."""

    def prepare(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The model split at its input convolution, on the CPU where it can be (see the module docstring)."""
        return split_on_cpu(model, example)

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """Occlusion maps of every scan and input channel, (scan, channel, set) items packed into padded passes."""
        shape, channels = tuple(volumes.shape[2:]), volumes.shape[1]
        fill = self.fill(template)
        fill = None if fill is None else fill.to(volumes.device).reshape(channels, *shape)
        sets = self.occluded_sets(shape, volumes.device)
        clean = class_logits(model, volumes, self.context)
        total = torch.zeros(volumes.shape, device=volumes.device)
        count = torch.zeros(shape, device=volumes.device)
        for occluded in sets:
            count[occluded] += 1
        item_scan = np.repeat(np.arange(len(volumes)), channels * len(sets))
        item_channel = np.tile(np.repeat(np.arange(channels), len(sets)), len(volumes))
        item_set = np.tile(np.arange(len(sets)), channels * len(volumes))
        if isinstance(model, InputSplit) and is_local_single_channel(model.layer):
            network, rows_of = model.rest, _LayerRows(model.layer, volumes, sets, fill)
        else:
            network, rows_of = model, _InputRows(volumes, sets, fill)
        with torch.inference_mode(), torch.autocast(self.context.device.type, enabled=self.context.amp):
            build = lambda index: rows_of(item_scan[index], item_channel[index], item_set[index])  # noqa: E731
            for index, rows in padded_batches(len(item_scan), self.context.batch, build):
                logits = network(rows).float()[: len(index)]
                scans = item_scan[index]
                drop = output_drop(clean[scans], logits, targets[scans], self.output)
                for row, item in enumerate(index):
                    total[item_scan[item], item_channel[item]][sets[item_set[item]]] += drop[row]
        return per_channel((total / count.clamp(min=1)).clamp(min=0))


class _InputRows:
    """Rows of occluded scans: a copy of the scan with the set filled in one channel (zeros, or the fill's values)."""

    def __init__(self, volumes: torch.Tensor, sets: list[Occluded], fill: torch.Tensor | None):
        self.volumes, self.sets, self.fill = volumes, sets, fill

    def __call__(self, scans: np.ndarray, channels: np.ndarray, set_numbers: np.ndarray) -> torch.Tensor:
        rows = self.volumes[scans].clone()
        for row, (channel, number) in enumerate(zip(channels, set_numbers)):
            occluded = self.sets[number]
            rows[row, channel][occluded] = 0 if self.fill is None else self.fill[channel][occluded]
        return rows


class _LayerRows:
    """Rows at the input layer's output: the scan's output minus the layer (no bias) applied to the change.

    The change of an occluded voxel is its value minus the fill (0 or the fill image's value).

    A voxel at index ``i`` of an axis feeds the outputs ``i + p - k + 1 .. i + p``
    (kernel ``k``, padding ``p``): the change is the valid convolution of the
    occluded voxels' bounding box padded by ``k - 1`` zeros, placed at
    ``start + p - k + 1`` and cut to the output grid. The rows returned are one
    reused buffer, valid until the next call.
    """

    def __init__(self, layer: nn.Conv3d, volumes: torch.Tensor, sets: list[Occluded], fill: torch.Tensor | None):
        self.layer, self.volumes, self.fill = layer, volumes, fill
        self.boxes = [_bounding_box(occluded) for occluded in sets]
        self.masks = [None if isinstance(occluded, tuple) else occluded[box].to(volumes.dtype)
                      for occluded, box in zip(sets, self.boxes)]
        self.outputs: dict[int, torch.Tensor] = {}
        self.buffer: torch.Tensor | None = None

    def output(self, scan: int) -> torch.Tensor:
        """The layer's output for one scan (one scan per call: a convolution's result depends on the batch)."""
        if scan not in self.outputs:
            self.outputs = {k: v for k, v in self.outputs.items() if k > scan - 2}  # items come scan by scan
            volume = self.volumes[scan:scan + 1].contiguous(memory_format=torch.channels_last_3d)
            self.outputs[scan] = self.layer(volume)[0]
        return self.outputs[scan]

    def __call__(self, scans: np.ndarray, channels: np.ndarray, set_numbers: np.ndarray) -> torch.Tensor:
        """Rows of ``scans`` with their sets occluded (one input channel: ``channels`` are all 0)."""
        first = self.output(int(scans[0]))
        if self.buffer is None or len(self.buffer) < len(scans):  # reused: a fresh one costs its page faults
            self.buffer = torch.empty((len(scans), *first.shape), dtype=first.dtype, device=first.device,
                                      memory_format=torch.channels_last_3d)  # the outputs' layout: plain copies
        rows = self.buffer[:len(scans)]
        for row, scan in enumerate(scans):
            rows[row].copy_(self.output(int(scan)))
        kernel, padding = self.layer.kernel_size, self.layer.padding
        margins = [m for k in reversed(kernel) for m in (k - 1, k - 1)]
        grid = rows.shape[2:]
        for row, (scan, number) in enumerate(zip(scans, set_numbers)):
            box = self.boxes[number]
            values = self.volumes[scan, 0][box]
            if self.fill is not None:
                values = values - self.fill[0][box]
            if self.masks[number] is not None:
                values = values * self.masks[number]
            change = F.conv3d(F.pad(values[None, None], margins), self.layer.weight)[0]
            source, target = [slice(None)], [slice(None)]
            for axis, (k, p, n) in enumerate(zip(kernel, padding, grid)):
                origin = box[axis].start + p - k + 1
                low, high = max(origin, 0), min(origin + change.shape[axis + 1], n)
                source.append(slice(low - origin, high - origin))
                target.append(slice(low, high))
            rows[row][tuple(target)] -= change[tuple(source)]
        return rows


def _bounding_box(occluded: Occluded) -> tuple[slice, ...]:
    """Index box of a set of voxels (a box as it is; a mask's bounding box)."""
    if isinstance(occluded, tuple):
        return occluded
    found = occluded.nonzero()
    if len(found) == 0:
        return tuple(slice(0, 0) for _ in occluded.shape)
    low, high = found.min(dim=0).values.tolist(), (found.max(dim=0).values + 1).tolist()
    return tuple(slice(a, b) for a, b in zip(low, high))


@METHODS.register("Occlusion")
class Occlusion(Ablation):
    """A cube of zeros slid over the scan (unsigned)."""

    name = "Occlusion"
    uses = ("occlusion_fill", "occlusion_size", "occlusion_stride")
    order = 6
    sets = ("rieke2018",)
    source = "Rieke 2018"
    summary = ("drop in the explained output when a cube of `--occlusion-size` mm is filled with `--occlusion-fill`, "
               "stride `--occlusion-stride`")

    def voxels(self, millimetres: float) -> int:
        """A length in mm as a whole number of voxels (at least 1)."""
        return max(1, int(round(millimetres / self.context.resolution)))

    def parameters(self) -> dict:
        """Patch edge and stride (mm and voxels), fill value and output explained."""
        return {"PatchMM": self.options.occlusion_size, "StrideMM": self.options.occlusion_stride,
                "PatchVoxels": self.voxels(self.options.occlusion_size),
                "StrideVoxels": self.voxels(self.options.occlusion_stride), "Fill": self.options.occlusion_fill,
                "Output": self.output, "ClippedAtZero": True}

    def occluded_sets(self, shape: tuple[int, int, int], device: torch.device) -> list[Occluded]:
        """Every patch position on captum's grid (the last patch of an axis may be cut by the border)."""
        size = [min(self.voxels(self.options.occlusion_size), n) for n in shape]
        stride = self.voxels(self.options.occlusion_stride)
        starts = [range(0, stride * (-(-(n - s) // stride)) + 1, stride) for n, s in zip(shape, size)]
        return [tuple(slice(a, a + s) for a, s in zip(corner, size)) for corner in itertools.product(*starts)]
