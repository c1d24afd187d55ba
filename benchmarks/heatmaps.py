"""Heatmap speed: seconds per subject per method, adheat's batched implementation vs captum per subject.

Usage::

    python benchmarks/heatmaps.py [--model resnet3d] [--channels 2] [--resolution 2] [--subjects 4] [--threads 2]
                                  [--device cpu|cuda] [--methods IG Saliency ...] [--repeat 3]
                                  [--no-reuse-memory] [--captum-reuse-memory]

Builds the ``--model`` network (default ``resnet3d``, the default model, with
two input channels as ``--input both`` gives it) for the analysis grid (seeded
random weights with non-trivial BatchNorm statistics: speed does not depend on
training) and ``--subjects`` scans (the template z-scored in its brain mask
plus noise, one noise draw per scan and channel). For every method it times
the reference implementation called once per subject with its defaults, where
one exists (IG: captum, ``n_steps`` = adheat's steps, ``internal_batch_size``
8; LRP: captum's ``EpsilonRule`` on the BatchNorm-folded model, compared with
adheat's epsilon rule, and, row ``LRP-epsilonplusflat``, zennit's
``EpsilonPlusFlat`` composite against adheat's; SmoothGrad: captum's
``NoiseTunnel`` of the gradient, seeded per scan as adheat's generators, so
the noise draws are the same; occlusion: ``perturbations_per_eval`` 1;
brain-area occlusion: :class:`~captum.attr.FeatureAblation` with the AAL3
labels as the feature mask, one set of labels per channel). The references run
first, in a fresh process, with glibc's allocator as a user's own script has
it. Then adheat's implementation runs on all scans at
once, as the runner runs it: the method's ``prepare`` (e.g. BatchNorm folded;
once per fold model, timed apart), fixed-shape padded passes and a
channels-last model (:mod:`adheat_app.attribution.base`), and CPU memory kept
for reuse (:func:`~adheat_app.memory.reuse_cpu_memory`;
``--no-reuse-memory`` times adheat without it, ``--captum-reuse-memory`` gives
captum the same, to show that part of the speed-up). NoiseImportance has no
captum counterpart: only its time is printed. On CUDA both sides run on the
GPU, adheat's forward-only passes under autocast as in the runner. Results
must agree (Pearson correlation >= 0.999 per scan) for the ratio to count.
Each side is timed ``--repeat`` times and the shortest counts. Prints one
table row per method (seconds are per subject, ``prepare`` per model) and the
peak resident memory of adheat's process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from captum.attr import LRP as CaptumLRP
from captum.attr import (FeatureAblation, GuidedBackprop, GuidedGradCam, IntegratedGradients, NoiseTunnel, Occlusion,
                         Saliency)
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import MethodContext, batch_size, channels_last, scan_seed
from adheat_app.attribution.canonize import fold_batchnorm
from adheat_app.attribution.lrp import COMPOSITE, explained_head
from adheat_app.attribution.output import OutputModel
from adheat_app.attribution.catalog import method_names
from adheat_app.config import HeatmapOptions
from adheat_app.models import MODELS
from adheat_app.templates import get_atlas, get_template
from adheat_app.memory import reuse_cpu_memory
from adheat_app.training.device import deterministic

T = TypeVar("T")
#: Methods captum has (the others are timed alone), and the LRP composite's row (reference: zennit).
CAPTUM = ("IG", "Saliency", "GuidedBackprop", "GGC", "LRP", "SmoothGrad", "Occlusion", "AreaOcclusion")
COMPOSITE_ROW = f"LRP-{COMPOSITE}"
#: Zero IG baseline and occlusion fill: the captum references use baselines=0 (a fold's training mean costs
#: the same: it only changes the baseline image).
OPTIONS = HeatmapOptions(ig_steps=32, lrp_rule="epsilon", occlusion_size=40.0, occlusion_stride=40.0,
                         noise_steps=20, ig_baseline="zero", occlusion_fill="zero")
#: The options of the composite's row.
COMPOSITE_OPTIONS = dataclasses.replace(OPTIONS, lrp_rule=COMPOSITE)


def scans(resolution: float, n: int, channels: int) -> torch.Tensor:
    """Template-like z-scored scans ``(n, channels, X, Y, Z)`` (each channel its own noise draw, rescaled to the
    first channel's range: captum's NoiseTunnel has one noise scale per scan, adheat's SmoothGrad one per channel)."""
    template = get_template(resolution)
    data = np.asarray(template.t1w.dataobj, dtype=np.float32)
    mask = template.mask_array()
    base = np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0).astype(np.float32)
    rng = np.random.default_rng(0)
    out = torch.from_numpy(np.stack([[base + mask * rng.normal(0, 0.3, base.shape).astype(np.float32)
                                      for _ in range(channels)] for _ in range(n)]))
    spread = out.flatten(2).amax(2) - out.flatten(2).amin(2)
    return out * (spread[:, :1] / spread)[:, :, None, None, None]


def network(name: str, shape: tuple[int, int, int], channels: int) -> nn.Module:
    """Model ``name`` with seeded weights and BatchNorm statistics, frozen, eval mode."""
    torch.manual_seed(0)
    model = MODELS[name](shape, channels)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def captum_lrp(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """captum LRP with EpsilonRule on every Conv3d/Linear/average pool of the folded model (head as adheat explains it).

    captum passes a residual sum's relevance whole to both addends (adheat splits it): on ``resnet3d`` the
    maps differ (the correlation column says by how much); zennit's row is the reference there.
    """
    folded = explained_head(fold_batchnorm(model, x), x, OPTIONS.explain_output)
    for module in folded.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear, nn.AdaptiveAvgPool3d)):
            module.rule = EpsilonRule(epsilon=OPTIONS.lrp_epsilon)
    for name, module in list(folded.named_modules()):
        if isinstance(module, nn.Identity):  # the folded BatchNorms: captum has no rule for Identity
            parent, _, attr = name.rpartition(".")
            owner = folded.get_submodule(parent)
            delattr(owner, attr)
            if not isinstance(owner, nn.Sequential):  # a block's attribute: a plain function in its place
                setattr(owner, attr, lambda t: t)
    return CaptumLRP(folded).attribute(x.requires_grad_(True), target=target)


def zennit_composite(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """zennit's EpsilonPlusFlat of the explained output (its modules imported without torchvision: tests/)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_lrp_composite import differenced, residual_additions, residual_canonizer, zennit_module

    attribution, composites, canonizers = (zennit_module(n) for n in ("attribution", "composites", "canonizers"))

    used = [canonizers.SequentialMergeBatchNorm(), *([residual_canonizer()] if residual_additions(model) else [])]
    composite = composites.EpsilonPlusFlat(epsilon=OPTIONS.lrp_epsilon, stabilizer=OPTIONS.lrp_epsilon,
                                           canonizers=used)
    onehot = nn.functional.one_hot(torch.tensor([target], device=x.device), 2).float()
    with attribution.Gradient(model=differenced(model), composite=composite) as attributor:
        return attributor(x, attr_output=lambda output: onehot * output)[1]


def captum_reference(name: str, model: nn.Module, x: torch.Tensor, target: int, resolution: float, key: str
                     ) -> torch.Tensor:
    """The reference map of one scan ``(1, C, X, Y, Z)`` by method ``name`` (:data:`CAPTUM`, :data:`COMPOSITE_ROW`)."""
    explained = OutputModel(model, OPTIONS.explain_output)  # the explained output, as adheat's
    x = x.clone().requires_grad_(True)
    if name == COMPOSITE_ROW:
        return zennit_composite(model, x.detach(), target)
    if name == "SmoothGrad":
        torch.manual_seed(scan_seed(0, key))  # adheat's per-scan draws (run seed 0)
        sigma = OPTIONS.smoothgrad_noise * float(x.detach()[0, 0].max() - x.detach()[0, 0].min())  # one range
        return NoiseTunnel(Saliency(explained)).attribute(
            x, nt_type="smoothgrad", nt_samples=OPTIONS.smoothgrad_samples, nt_samples_batch_size=1, stdevs=sigma,
            target=target, abs=False)
    if name == "IG":
        return IntegratedGradients(explained).attribute(x, target=target, n_steps=OPTIONS.ig_steps,
                                                    internal_batch_size=8)
    if name == "Saliency":
        return Saliency(explained).attribute(x, target=target, abs=True)
    if name == "GuidedBackprop":
        return GuidedBackprop(explained).attribute(x, target=target)
    if name == "GGC":  # captum stretches the CAM over the input; adheat places it by geometry (correlation < 1)
        return GuidedGradCam(explained, model.last_conv).attribute(x, target=target, interpolate_mode="trilinear")
    if name == "LRP":
        return captum_lrp(model, x.detach(), target)
    if name == "Occlusion":
        edge = max(1, round(OPTIONS.occlusion_size / resolution))
        stride = max(1, round(OPTIONS.occlusion_stride / resolution))
        with torch.inference_mode():
            return Occlusion(explained).attribute(x.detach(), sliding_window_shapes=(1, edge, edge, edge),
                                                    strides=(1, stride, stride, stride), baselines=0,
                                                    target=target).clamp(min=0)
    atlas = torch.from_numpy(get_atlas(resolution).array().astype(np.int64)).to(x.device)
    offset = int(atlas.max()) + 1  # one set of labels per channel: adheat fills one channel at a time
    labels = torch.stack([torch.where(atlas > 0, atlas + c * offset, 0) for c in range(x.shape[1])])[None]
    with torch.inference_mode():  # AreaOcclusion
        drop = FeatureAblation(explained).attribute(x.detach(), baselines=0, target=target, feature_mask=labels)
    return torch.where(labels > 0, drop, 0).clamp(min=0)


def synchronized(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps."""
    return float(np.corrcoef(a.detach().cpu().double().flatten().numpy(),
                            b.detach().cpu().double().flatten().numpy())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet3d", choices=sorted(MODELS))
    parser.add_argument("--channels", type=int, default=2, help="Input channels (2: --input both, 1: one channel).")
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--mem-gb", type=float, default=0.0, help="Memory budget that sets the batch (as --mem-gb).")
    parser.add_argument("--methods", nargs="+", default=[*method_names(), COMPOSITE_ROW],
                        help=f"Methods (and the row {COMPOSITE_ROW}: adheat's LRP composite against zennit's).")
    parser.add_argument("--repeat", type=int, default=3, help="Time each side this many times; the best counts.")
    parser.add_argument("--no-reuse-memory", dest="reuse_memory", action="store_false",
                        help="Time adheat without its CPU memory reuse (the allocator's share of the speed-up).")
    parser.add_argument("--captum-reuse-memory", action="store_true",
                        help="Time captum with adheat's CPU memory reuse too.")
    args = parser.parse_args()
    # captum in a fresh process: glibc's allocator as a user's own script has it (see reuse_cpu_memory)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        references = pool.submit(captum_side, args).result()
    device, x, targets, model = setup(args)
    fast = channels_last(model)
    shape = tuple(x.shape[2:])
    context = MethodContext(args.resolution, get_template(args.resolution).space,
                            batch_size(OPTIONS, args.mem_gb, shape), 0, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads {args.threads}"
    print(f"{args.model}, {args.channels} channel(s), grid {shape}, {args.subjects} subjects, batch {context.batch}, "
          f"{where}; adheat memory reuse "
          f"{args.reuse_memory}, captum memory reuse {args.captum_reuse_memory}")
    print("method\tadheat_prepare_s\tadheat_s_per_subject\tcaptum_s_per_subject\tspeedup\tmin_correlation")
    with deterministic(device, args.threads, exact=True):  # as the runner computes heatmaps
        with reuse_cpu_memory(device) if args.reuse_memory else contextlib.nullcontext():
            for name in args.methods:
                row(name, args, fast, x, targets, context, references.get(name))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak resident memory of adheat's process: {peak:.2f} GB")


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.Tensor, torch.Tensor, nn.Module]:
    """Device, scans, targets and the network (seeded: both processes build the same ones), warmed up."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = scans(args.resolution, args.subjects, args.channels).to(device)
    model = network(args.model, tuple(x.shape[2:]), args.channels).to(device)
    targets = torch.tensor([i % 2 for i in range(args.subjects)], device=device)
    first = x[:1].clone().requires_grad_(True)  # warm-up: first-call costs (CUDA context, cuDNN, oneDNN)
    torch.autograd.grad(model(first).sum(), first)
    return device, x, targets, model


def best_of(repeat: int, device: torch.device, work: Callable[[], T]) -> tuple[T, float]:
    """The result of ``work`` and its shortest wall time over ``repeat`` runs (machine noise only adds time)."""
    best = float("inf")
    for _ in range(repeat):
        start = synchronized(device)
        result = work()
        best = min(best, synchronized(device) - start)
    return result, best


def captum_side(args: argparse.Namespace) -> dict[str, tuple[list[np.ndarray], float]]:
    """captum's maps of every scan, one call per scan, and the seconds per scan, for each method captum has."""
    device, x, targets, model = setup(args)
    out = {}
    with deterministic(device, args.threads, exact=True):
        with reuse_cpu_memory(device) if args.captum_reuse_memory else contextlib.nullcontext():
            for name in (n for n in args.methods if n in (*CAPTUM, COMPOSITE_ROW)):
                refs, seconds = best_of(args.repeat, device, lambda name=name: [
                    captum_reference(name, model, x[i:i + 1], int(targets[i]), args.resolution, f"sub-{i}")
                    .detach().cpu().numpy() for i in range(len(x))])
                out[name] = refs, seconds / len(x)
    return out


def row(name: str, args: argparse.Namespace, fast: nn.Module, x: torch.Tensor, targets: torch.Tensor,
        context: MethodContext, reference: tuple[list[np.ndarray], float] | None) -> None:
    """Time adheat's implementation of one method and print its table row against captum's."""
    method = METHODS["LRP"](COMPOSITE_OPTIONS, context) if name == COMPOSITE_ROW else METHODS[name](OPTIONS, context)
    keys = [f"sub-{i}" for i in range(args.subjects)]
    prepared, prepare_seconds = best_of(1, x.device, lambda: method.prepare(fast, x[:1]))
    ours, seconds = best_of(args.repeat, x.device, lambda: method.attribute(prepared, x, targets, keys))
    seconds /= args.subjects
    if reference is None:
        print(f"{name}\t{prepare_seconds:.2f}\t{seconds:.3f}\tn/a\tn/a\tn/a", flush=True)
        return
    refs, reference_seconds = reference
    agreement = min(correlation(ours[i], torch.from_numpy(refs[i][0] if refs[i].shape[1] > 1 else refs[i][0, 0]))
                    for i in range(args.subjects))
    print(f"{name}\t{prepare_seconds:.2f}\t{seconds:.3f}\t{reference_seconds:.3f}\t{reference_seconds / seconds:.2f}"
          f"\t{agreement:.5f}", flush=True)


if __name__ == "__main__":
    main()
