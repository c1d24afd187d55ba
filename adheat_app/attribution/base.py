"""The heatmap method base class and the fixed-shape batching every method shares.

A method (one file per method in this package) turns a batch of template-space
volumes and their target classes into one map per volume. Work is cut into
*items* (a scan, a scan at one IG step, a scan with one patch occluded) and
items of many scans are packed into forward/backward passes of exactly
``batch`` rows; the last pass is padded with zero volumes.

Why a fixed shape: on CPU (oneDNN) and with cuDNN, a row's result depends on
the batch *size* (different kernels are chosen) but not on its position or on
the other rows (``docs/performance.md``). Padding every pass to the same size makes a
scan's heatmap bitwise identical whichever scans share its passes, so the
participant level (one subject) and the group level (all subjects) write the
same files.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from adheat_app.attribution.canonize import fold_batchnorm
from adheat_app.attribution.inputconv import with_fast_input_gradient
from adheat_app.config import HeatmapOptions

#: Bytes of activations and gradients per input voxel of one row in a backward pass (the Rieke et al.
#: network's, rounded up: docs/performance.md).
BYTES_PER_VOXEL = 256
#: Rows per pass when the memory budget allows it.
MAX_BATCH = 16
#: Memory budget (GB) assumed when --mem-gb is 0.
DEFAULT_MEM_GB = 4.0


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to know beyond its options.

    Attributes
    ----------
    resolution : float
        Voxel size of the analysis grid in mm (patch sizes are given in mm).
    space : str
        Template space of the volumes (atlas and mean baseline).
    batch : int
        Rows per forward/backward pass.
    seed : int
        Root seed (stochastic methods derive a per-scan seed from it).
    device : torch.device
        Compute device.
    mixed_precision : bool
        ``--amp`` / ``--no-amp``: whether forward-only passes may use mixed precision.
    """

    resolution: float
    space: str
    batch: int
    seed: int
    device: torch.device
    mixed_precision: bool = True

    @property
    def amp(self) -> bool:
        """Mixed precision for forward-only passes: on CUDA, unless ``--no-amp``."""
        return self.mixed_precision and self.device.type == "cuda"


def batch_size(options: HeatmapOptions, mem_gb: float, shape: tuple[int, ...]) -> int:
    """Rows per pass: ``--heatmap-batch-size``, or what half the memory budget holds.

    Parameters
    ----------
    options : HeatmapOptions
        Heatmap options (``heatmap_batch_size`` > 0 wins).
    mem_gb : float
        Memory budget in GB (0: :data:`DEFAULT_MEM_GB`).
    shape : tuple of int
        Volume grid.
    """
    if options.heatmap_batch_size > 0:
        return options.heatmap_batch_size
    per_row = float(np.prod(shape)) * BYTES_PER_VOXEL
    budget = (mem_gb or DEFAULT_MEM_GB) * 1e9 / 2
    return int(min(MAX_BATCH, max(1, budget // per_row)))


def scan_seed(seed: int, key: str) -> int:
    """A per-scan seed from the root seed and the scan's key (independent of batch composition)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def padded_batches(n_items: int, batch: int, build: Callable[[np.ndarray], torch.Tensor]
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(item indices, rows)`` with ``rows`` always holding exactly ``batch`` rows.

    Parameters
    ----------
    n_items : int
        Number of items.
    batch : int
        Rows per pass.
    build : callable
        Maps an array of item indices to their input rows ``(len, 1, X, Y, Z)``;
        the rows are padded with zeros to ``batch`` and returned channels-last.
    """
    for start in range(0, n_items, batch):
        index = np.arange(start, min(start + batch, n_items))
        rows = build(index)
        if len(index) < batch:
            pad = rows.new_zeros((batch - len(index), *rows.shape[1:]))
            rows = torch.cat([rows, pad])
        yield index, rows.contiguous(memory_format=torch.channels_last_3d)


def channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its weights in the channels-last layout (faster 3D convolutions on CPU: docs/performance.md).

    Passes built by :func:`padded_batches` are channels-last too.
    """
    return model.to(memory_format=torch.channels_last_3d)


def pad_targets(targets: torch.Tensor, batch: int) -> torch.Tensor:
    """Targets of a padded batch (class 0 for the padding rows)."""
    return torch.cat([targets, targets.new_zeros(batch - len(targets))]) if len(targets) < batch else targets


def class_logits(model: nn.Module, volumes: torch.Tensor, context: MethodContext, amp: bool = True
                 ) -> torch.Tensor:
    """Logits ``(N, 2)`` of every row, computed in padded passes without gradients (``amp``: as ``context.amp``)."""
    out = torch.empty((len(volumes), 2), device=volumes.device)
    with torch.inference_mode(), torch.autocast(context.device.type, enabled=context.amp and amp):
        for index, rows in padded_batches(len(volumes), context.batch, lambda i: volumes[i]):
            out[index] = model(rows).float()[: len(index)]
    return out


def class_probability(model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, context: MethodContext
                      ) -> torch.Tensor:
    """Probability of each row's target class, computed in padded passes without gradients."""
    prob = torch.softmax(class_logits(model, volumes, context), dim=1)
    return prob[torch.arange(len(volumes)), targets]


class MethodOptions:
    """The options one method receives: ``explain_output`` and the fields it declares (:attr:`Method.uses`).

    Reading any other option raises an ``AttributeError`` naming the method
    and the missing declaration.
    """

    def __init__(self, method: str, values: dict):
        self._method = method
        self._values = dict(values)

    def __getattr__(self, field: str):
        values = self.__dict__.get("_values", {})
        if field not in values:
            raise AttributeError(f"heatmap method {self.__dict__.get('_method')} reads option {field!r} without "
                                 "declaring it in its `uses`")
        return values[field]


def per_channel(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(N, C, X, Y, Z)`` as :meth:`Method.attribute` returns them: ``(N, X, Y, Z)`` when ``C`` is 1."""
    return maps[:, 0] if maps.shape[1] == 1 else maps


class Method(ABC):
    """A heatmap method (one subclass per file, registered by CLI name).

    Subclasses declare what the command line, the defaults and README.md's
    methods table are made from (:mod:`.catalog`): :attr:`name`,
    :attr:`signed`, :attr:`slow`, :attr:`order`, :attr:`default`,
    :attr:`sets`, :attr:`source`, :attr:`summary`; they document their
    parameters in :meth:`parameters` and compute maps in :meth:`attribute`.
    :func:`check_method` checks the declarations when a method registers.

    Parameters
    ----------
    options : HeatmapOptions or MethodOptions
        Heatmap options of the run; the method keeps only ``explain_output``
        and the fields it declares in :attr:`uses` (:class:`MethodOptions`).
    context : MethodContext
        Grid, batch size, seed and device.
    """

    #: The ``--methods`` name (the registered name).
    name: ClassVar[str]
    #: Whether maps have both signs.
    signed: ClassVar[bool]
    #: Too slow for the default run (opt-in).
    slow: ClassVar[bool] = False
    #: Position in ``--methods all``, the reports and README.md's table (unique).
    order: ClassVar[int]
    #: Part of the default ``--methods``.
    default: ClassVar[bool] = False
    #: Study sets of ``--methods`` that include the method (e.g. ``"wang2023"``).
    sets: ClassVar[tuple[str, ...]] = ()
    #: Study the method is taken from (README.md's table).
    source: ClassVar[str]
    #: What the method computes, one line of Markdown (README.md's table).
    summary: ClassVar[str]
    #: Why a fast method is not a default (README.md's table).
    default_note: ClassVar[str] = ""
    #: The :class:`~adheat_app.config.HeatmapOptions` fields the method reads, besides ``explain_output``.
    uses: ClassVar[tuple[str, ...]] = ()
    #: Why a map of this method can be zero everywhere (appended to the runner's warning).
    all_zero_reason: ClassVar[str] = ""

    def __init__(self, options: HeatmapOptions | MethodOptions, context: MethodContext):
        self.options = MethodOptions(getattr(self, "name", type(self).__name__),
                                     {field: getattr(options, field) for field in ("explain_output", *self.uses)})
        self.context = context

    @property
    def needs_template(self) -> bool:
        """Whether :meth:`attribute` needs the fold's training mean image (``template``)."""
        return False

    @property
    def output(self) -> str:
        """The explained output (``--explain-output``, see :mod:`.output`)."""
        return self.options.explain_output

    @abstractmethod
    def parameters(self) -> dict:
        """The method's parameters as recorded in sidecars (and compared on reruns)."""

    def prepare(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The model as :meth:`attribute` runs fastest on it, built once per fold model (default: as it is).

        Parameters
        ----------
        model : nn.Module
            Classifier in eval mode, parameters frozen.
        example : torch.Tensor
            One scan ``(1, 1, X, Y, Z)`` on the model's device (to trace and verify a rewrite).
        """
        return model

    @abstractmethod
    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """Heatmaps of ``volumes`` for their ``targets``.

        Parameters
        ----------
        model : nn.Module
            Classifier in eval mode, parameters frozen, on ``context.device``
            (as it is, or as :meth:`prepare` returned it).
        volumes : torch.Tensor
            ``(N, C, X, Y, Z)`` float32 on ``context.device`` (``C`` input channels, ``--input``).
        targets : torch.Tensor
            ``(N,)`` int64 class explained per volume.
        keys : list of str
            Scan keys (per-scan seeds of stochastic methods, keys of :meth:`attribution`'s diagnostics).
        template : torch.Tensor, optional
            ``(C, X, Y, Z)`` (or ``(X, Y, Z)`` for one channel) mean input of the model's training scans
            (methods whose :attr:`needs_template` is true).

        Returns
        -------
        torch.Tensor
            ``(N, X, Y, Z)`` float32 for a one-channel input; ``(N, C, X, Y, Z)``, one map per channel,
            otherwise (:func:`per_channel`).
        """


    def attribution(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                    template: torch.Tensor | None = None) -> Attribution:
        """:meth:`attribute`'s maps beside per-scan values for the sidecars (default: none).

        A method that measures something per scan (e.g. IG's completeness
        error) overrides this; the runner records the values of each scan in
        its map's sidecar.
        """
        return Attribution(self.attribute(model, volumes, targets, keys, template), {})


class Attribution(NamedTuple):
    """Maps of a batch of scans (:meth:`Method.attribute`) and, per scan key, values for their sidecars."""

    maps: torch.Tensor
    diagnostics: dict[str, dict]


class GradientMethod(Method):
    """A method with one backward pass per scan: scans are packed into padded passes."""

    def prepare(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The same function, faster to differentiate: BatchNorms folded, fast input-layer gradient.

        BatchNorms are folded into their convolutions
        (:func:`~adheat_app.attribution.canonize.fold_batchnorm`; a model where
        one is not fed by a Conv3d keeps them all), and the convolution that
        reads the scan gets the CPU's faster input gradient
        (:func:`~adheat_app.attribution.inputconv.with_fast_input_gradient`).
        """
        try:
            prepared = fold_batchnorm(model, example)
        except ValueError:
            prepared = copy.deepcopy(model)
        return with_fast_input_gradient(prepared)

    @abstractmethod
    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, C, X, Y, Z)`` of one full pass (``targets`` already padded)."""

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """Heatmaps, one padded pass of ``context.batch`` scans at a time."""
        out = torch.empty(volumes.shape, device=volumes.device)
        for index, rows in padded_batches(len(volumes), self.context.batch, lambda i: volumes[i]):
            rows.requires_grad_(True)
            maps = self.explain(model, rows, pad_targets(targets[index], self.context.batch))
            out[index] = maps[: len(index)].detach().float()
        return per_channel(out)


def check_method(name: str, cls: type) -> None:
    """Raise when a registered heatmap method's class breaks the method contract.

    The class must subclass :class:`Method`, be registered under its own
    :attr:`~Method.name`, declare :attr:`~Method.signed`, :attr:`~Method.slow`
    and :attr:`~Method.default` as booleans, an integer :attr:`~Method.order`,
    a :attr:`~Method.source` and a :attr:`~Method.summary`, implement
    :meth:`~Method.parameters` and :meth:`~Method.attribute`, and not be both
    slow and a default.

    Raises
    ------
    TypeError
        Naming the method and every rule it breaks.
    """
    problems = []
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"heatmap method {name!r} must be a subclass of adheat_app.attribution.base.Method")
    if getattr(cls, "name", None) != name:
        problems.append(f"its name attribute is {getattr(cls, 'name', None)!r}, not the registered {name!r}")
    for attribute, kind in (("signed", bool), ("slow", bool), ("default", bool), ("order", int), ("source", str),
                            ("summary", str), ("default_note", str)):
        if not isinstance(getattr(cls, attribute, None), kind):
            problems.append(f"declare {attribute} ({kind.__name__})")
    fields = {f.name for f in dataclasses.fields(HeatmapOptions)}
    unknown = [u for u in getattr(cls, "uses", ()) if u not in fields]
    if unknown:
        problems.append(f"uses names no heatmap option: {', '.join(unknown)}")
    if getattr(cls, "slow", False) and getattr(cls, "default", False):
        problems.append("a slow method cannot be a default")
    if getattr(cls, "__abstractmethods__", None):
        problems.append(f"implement {', '.join(sorted(cls.__abstractmethods__))}")
    if problems:
        raise TypeError(f"heatmap method {name!r} breaks the method contract: " + "; ".join(problems))
