"""Heatmap methods: axioms, equality with captum, batch invariance, ground truth, and the runner.

Unit tests use small models defined here that follow the model contract
(``Conv3d -> BatchNorm3d -> nn.ReLU() -> MaxPool3d`` blocks, ``torch.flatten``
in ``forward``, ``model.last_conv``). The ground-truth tests train such a model
on a simulated cohort with planted atrophy (and on a null cohort) and check
where each method puts its relevance. The runner tests go through
:func:`adheat_app.training.run_training` and :func:`run_heatmaps`.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LRP as CaptumLRP
from captum.attr import FeatureAblation, GuidedBackprop, IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency
from captum.attr import Occlusion as CaptumOcclusion
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import MethodContext, batch_size, channels_last, scan_seed
from adheat_app.attribution.canonize import InputSplit, fold_batchnorm, set_submodule, split_input_layer
from adheat_app.attribution.ggc import GradCamModel, grad_cam
from adheat_app.attribution.inputconv import SingleChannelConv3d, with_fast_input_gradient
from adheat_app.attribution.lrp import lrp
from adheat_app.attribution.output import OutputModel, difference_head, explained, output_drop
from adheat_app.attribution.receptive import UnitGrid, interpolation_matrix
from adheat_app.attribution.base import Method, check_method
from adheat_app.attribution.data_randomisation import permuted_cohort, permuted_labels_config
from adheat_app.attribution.catalog import (default_methods, method_names, method_sets, methods_markdown,
                                            selected_methods)
from adheat_app.attribution.runner import run_heatmaps
from adheat_app.attribution.sanity import sanity_check
from adheat_app.bids import Derivatives, T1wInput
from adheat_app.cli.parser import options_markdown
from adheat_app.config import DEFAULT_METHODS, HeatmapOptions
from adheat_app.errors import InputError
from adheat_app.io import read_json
from adheat_app.layout import sidecar_path
from adheat_app.models import MODELS
from adheat_app.simulate import relevance_ratio
from conftest import heatmap_file, make_preprocessed_cohort

GRID = (16, 20, 16)
CPU = torch.device("cpu")
FAST = ("IG", "LRP", "GGC", "Saliency", "GuidedBackprop")
GROUND_TRUTH = (*FAST, "Occlusion")


class TinyCNN(nn.Module):
    """Two or three conv blocks and a two-layer head, per the model contract."""

    def __init__(self, shape: tuple[int, int, int], channels=(4, 8), bias: bool = True, hidden: int = 16,
                 downsample: int = 1, padding: int = 0, in_channels: int = 1):
        super().__init__()
        blocks = [nn.AvgPool3d(downsample)] if downsample > 1 else []
        grid, c_in = [n // downsample for n in shape], in_channels
        for c_out in channels:
            blocks += [nn.Conv3d(c_in, c_out, 3, bias=bias, padding=padding), nn.BatchNorm3d(c_out), nn.ReLU(),
                       nn.MaxPool3d(2)]
            grid, c_in = [(n - 2 + 2 * padding) // 2 for n in grid], c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(c_in * int(np.prod(grid)), hidden, bias=bias), nn.ReLU(),
                                  nn.Dropout(0.2), nn.Linear(hidden, 2, bias=bias))

    @property
    def last_conv(self) -> nn.Conv3d:
        return self.features[-4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def random_model(seed: int = 0, shift: bool = True, **kwargs) -> nn.Module:
    """A TinyCNN with non-trivial BatchNorm statistics (``shift=False``: zero means and offsets)."""
    torch.manual_seed(seed)
    model = TinyCNN(GRID, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_var.uniform_(0.5, 2.0)
            if shift:
                module.running_mean.uniform_(-0.2, 0.2)
                module.bias.data.uniform_(-0.2, 0.2)
    return frozen(model)


def context(batch: int = 4, resolution: float = 4.0, seed: int = 0) -> MethodContext:
    return MethodContext(resolution, "MNI152NLin2009cAsym", batch, seed, CPU)


def volumes(n: int = 3, seed: int = 1, channels: int = 1) -> torch.Tensor:
    return torch.randn((n, channels, *GRID), generator=torch.Generator().manual_seed(seed))


def on_test_grid(name: str, options: HeatmapOptions, ctx: MethodContext) -> Method:
    """Method ``name`` for the test grid :data:`GRID`: an atlas method gets blocks of 640 voxels as its regions."""
    cls = METHODS[name]
    if not hasattr(cls, "atlas"):
        return cls(options, ctx)
    labels = torch.arange(int(np.prod(GRID))).reshape(GRID) // 640 + 1

    class Regions(cls):
        def occluded_sets(self, shape, device):
            return [labels == value for value in range(1, int(labels.max()) + 1)]

    return Regions(options, ctx)


def fields_help(section, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(section) if f.name == name)


def test_registry_has_every_method_with_its_declarations():
    names = method_names()
    assert sorted(names) == sorted(METHODS) and len({METHODS[n].order for n in names}) == len(names)
    for name in names:
        check_method(name, METHODS[name])  # what registering checked
    assert selected_methods(("all",)) == names
    assert selected_methods(HeatmapOptions().methods) == list(default_methods())
    assert HeatmapOptions().methods == (DEFAULT_METHODS,)  # config.py's default stands for the declarations
    assert f"| `--methods` | {' '.join(default_methods())} |" in options_markdown()  # --help and README show them
    for study, members in method_sets().items():  # the --methods help names each set's methods
        assert f"'{study}' {' '.join(members)}" in fields_help(HeatmapOptions, "methods").replace("selects ", "")
        assert selected_methods((study,)) == list(members)
    assert selected_methods(("wang2023", "Saliency")) == ["IG", "LRP", "GGC", "Saliency"]
    with pytest.raises(InputError, match="Gradcam"):
        selected_methods(("Gradcam",))


def test_readme_methods_table_is_the_registry_s():
    from conftest import REPO

    assert methods_markdown() in (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", method_names())
def test_a_method_receives_only_its_own_options(name):
    method = METHODS[name](HeatmapOptions(), context())
    own = {"explain_output", *METHODS[name].uses}
    for field in dataclasses.fields(HeatmapOptions):
        if field.name in own:
            assert getattr(method.options, field.name) == field.default
        else:
            with pytest.raises(AttributeError, match=f"{name} reads option '{field.name}' without declaring it"):
                getattr(method.options, field.name)


def test_registering_a_method_that_breaks_the_contract_fails_naming_it():
    class Half(Method):
        name = "Other"
        signed = "yes"
        slow = True
        default = True
        uses = ("ig_steps", "ig_stepz")

    broken = (r"'Half'.*name attribute is 'Other'.*declare signed.*declare order.*uses names no heatmap option: "
              r"ig_stepz.*slow method cannot be a default.*implement attribute, parameters")
    with pytest.raises(TypeError, match=broken):
        METHODS.register("Half")(Half)
    assert "Half" not in METHODS


def test_batch_size_follows_the_memory_budget():
    assert batch_size(HeatmapOptions(heatmap_batch_size=3), 0, (97, 115, 97)) == 3
    assert batch_size(HeatmapOptions(), 0, (49, 58, 49)) == 16
    assert batch_size(HeatmapOptions(), 2.0, (97, 115, 97)) == 3
    assert batch_size(HeatmapOptions(), 0, (193, 229, 193)) == 1


@pytest.mark.parametrize("output", ["difference", "logit", "probability"])
@pytest.mark.parametrize("prepared", [True, False], ids=["split-at-input-layer", "whole-model"])
def test_ig_is_complete_and_equals_captum(prepared, output):
    """Summed IG = f(x) - f(0) (completeness, 64 steps) and the batched IG equals captum's per scan.

    ``f`` is the explained output (captum integrates the same output through
    :class:`OutputModel`). Prepared, IG integrates at the input convolution's
    output and maps the sum back once per scan; unprepared, through the whole
    model: both equal captum.
    """
    model = random_model(seed=3)
    x, targets = volumes(2), torch.tensor([1, 0])
    ig = METHODS["IG"](HeatmapOptions(ig_steps=64, explain_output=output, ig_baseline="zero"), context(batch=5))
    prepared_model = ig.prepare(model, x[:1]) if prepared else model
    assert isinstance(prepared_model, InputSplit) is prepared
    maps = ig.attribute(prepared_model, x, targets, ["a", "b"])
    logits, base = model(x), model(torch.zeros_like(x))
    for i, t in enumerate(targets):
        o = 1 - t
        expected = {"logit": logits[i, t] - base[i, t],
                    "difference": (logits[i, t] - logits[i, o]) - (base[i, t] - base[i, o]),
                    "probability": torch.softmax(logits[i], 0)[t] - torch.softmax(base[i], 0)[t]}[output]
        assert abs(float(maps[i].sum()) - float(expected)) <= 0.05 * abs(float(expected))
    reference = IntegratedGradients(OutputModel(model, output)).attribute(x, target=targets, n_steps=64,
                                                                          internal_batch_size=16)
    np.testing.assert_allclose(maps.numpy(), reference[:, 0].numpy(), atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("baseline", ["template", "blurred"])
def test_ig_baselines_are_complete_equal_captum_and_report_their_convergence(baseline, caplog):
    """template: the given training mean; blurred: each scan smoothed (12 mm FWHM). Both complete and equal to captum.

    IGConvergenceDelta = |sum - (f(x) - f(baseline))| is recorded per scan; with 2 steps it exceeds 5 % and is warned.
    """
    model = random_model(seed=3)
    x, targets = volumes(2), torch.tensor([1, 0])
    template = volumes(1, seed=21)[0, 0]
    ig = METHODS["IG"](HeatmapOptions(ig_steps=64, ig_baseline=baseline), context(batch=5))
    maps, diagnostics = ig.attribution(ig.prepare(model, x[:1]), x, targets, ["a", "b"], template=template)
    if baseline == "template":
        base = template[None, None].expand_as(x)
    else:
        base = ig.baseline(x, None)
        assert base.shape == x.shape and float((base[0] - base[1]).abs().max()) > 0  # one baseline per scan
        assert float(base.std()) < 0.5 * float(x.std())  # smoothed
    reference = IntegratedGradients(OutputModel(model, "difference")).attribute(
        x, baselines=base, target=targets, n_steps=64, internal_batch_size=16)
    np.testing.assert_allclose(maps.numpy(), reference[:, 0].numpy(), atol=1e-5 * float(reference.abs().max()))
    change = explained(model(x), targets, "difference") - explained(model(base), targets, "difference")
    for i, key in enumerate(["a", "b"]):
        delta = diagnostics[key]["IGConvergenceDelta"]
        assert delta == pytest.approx(abs(float(maps[i].sum()) - float(change[i])), rel=1e-3, abs=1e-6)
        assert diagnostics[key]["IGConvergenceDeltaRelative"] < 0.05
    coarse = METHODS["IG"](HeatmapOptions(ig_steps=2, ig_baseline=baseline), context(batch=5))
    with caplog.at_level("WARNING"):
        _, diagnostics = coarse.attribution(model, x, targets, ["a", "b"], template=template)
    assert diagnostics["a"]["IGConvergenceDeltaRelative"] > 0.05 and "raise --ig-steps" in caplog.text


def test_ig_split_refuses_a_model_that_reuses_its_input():
    """A model whose input also skips past the first convolution is not split (IG runs through all of it)."""

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 3, padding=1)
            self.fc = nn.Linear(int(np.prod(GRID)), 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv(x) + x, 1))

    model = Skip().eval()
    x = volumes(1)
    with pytest.raises(ValueError, match="beyond its input layer"):
        split_input_layer(model, x)
    assert METHODS["IG"](HeatmapOptions(), context(batch=2)).prepare(model, x) is model


def test_folding_batchnorm_keeps_outputs():
    model = random_model(seed=4)
    x = volumes(2)
    folded = fold_batchnorm(model, x[:1])
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert torch.allclose(folded(x), model(x), atol=1e-4)


@pytest.mark.parametrize("output", ["difference", "logit", "probability"])
@pytest.mark.parametrize("name", ["Saliency", "GuidedBackprop"])
def test_gradient_methods_on_the_folded_model_equal_captum_on_the_trained_model(name, output):
    """prepare() folds the BatchNorms; maps equal captum's on the original (captum explains the same output)."""
    model = random_model(seed=5)
    x, targets = volumes(3, seed=6), torch.tensor([1, 0, 1])
    method = METHODS[name](HeatmapOptions(explain_output=output), context(batch=2))
    prepared = method.prepare(model, x[:1])
    assert not [m for m in prepared.modules() if isinstance(m, nn.BatchNorm3d)]
    assert isinstance(prepared.features[0], SingleChannelConv3d)  # the fast input gradient is exercised too
    ours = method.attribute(prepared, x, targets, ["a", "b", "c"])
    inputs = x.clone().requires_grad_(True)
    if name == "Saliency":
        reference = Saliency(OutputModel(model, output)).attribute(inputs, target=targets, abs=True)
    else:
        reference = GuidedBackprop(OutputModel(model, output)).attribute(inputs, target=targets)
    reference = reference[:, 0].detach()
    assert float(reference.abs().max()) > 0
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("output", ["difference", "probability"])
def test_smoothgrad_equals_captums_noise_tunnel_with_the_same_noise_draws(output, channels):
    """Batched SmoothGrad on the folded model = captum's NoiseTunnel (smoothgrad) of the gradient, scan by scan.

    captum draws its noise from the global generator, one sample per call with
    ``nt_samples_batch_size=1``; seeding it with the scan's seed gives the
    draws adheat's per-scan generator makes. Two channels get their own noise
    scale; here the second channel is rescaled to the first's range, so one
    ``stdevs`` serves captum.
    """
    model = random_model(seed=5, in_channels=channels)
    x, targets, keys = volumes(3, seed=6, channels=channels), torch.tensor([1, 0, 1]), ["a", "b", "c"]
    if channels == 2:
        spread = lambda v: v.amax(dim=(1, 2, 3)) - v.amin(dim=(1, 2, 3))  # noqa: E731
        x[:, 1] = 0.1 * x[:, 1] + 0.3
        x[:, 1] *= (spread(x[:, 0]) / spread(x[:, 1]))[:, None, None, None]
    options = HeatmapOptions(explain_output=output, smoothgrad_samples=5, smoothgrad_noise=0.15)
    method = METHODS["SmoothGrad"](options, context(batch=4, seed=3))
    ours = method.attribute(method.prepare(model, x[:1]), x, targets, keys)
    ours = ours if channels == 2 else ours[:, None]
    tunnel = NoiseTunnel(Saliency(OutputModel(model, output)))
    for i, key in enumerate(keys):
        sigma = 0.15 * float(x[i, 0].max() - x[i, 0].min())
        torch.manual_seed(scan_seed(3, key))
        reference = tunnel.attribute(x[i:i + 1].clone().requires_grad_(True), nt_type="smoothgrad", nt_samples=5,
                                     nt_samples_batch_size=1, stdevs=sigma, target=int(targets[i]), abs=False)
        assert float(reference.abs().max()) > 0
        np.testing.assert_allclose(ours[i].numpy(), reference[0].detach().numpy(),
                                   atol=1e-5 * float(reference.abs().max()))
    plain = METHODS["Saliency"](options, context(batch=4)).attribute(model, x, targets, keys)
    assert not torch.allclose(ours.abs(), plain if channels == 2 else plain[:, None])  # the noise matters


@pytest.mark.parametrize("output", ["difference", "logit"])
def test_ggc_is_captums_grad_cam_after_the_batchnorm_placed_by_geometry_times_guided_backprop(output):
    """The CAM equals captum's LayerGradCam of the BatchNorm after last_conv, placed by the layers' geometry.

    Folded and fast (prepared) or not, the maps are equal; GGC = that CAM times captum's GuidedBackprop.
    """
    model = random_model(seed=5, padding=1)
    x, targets = volumes(3, seed=6), torch.tensor([1, 0, 1])
    method = METHODS["GGC"](HeatmapOptions(explain_output=output), context(batch=2))
    prepared = method.prepare(model, x[:1])
    assert isinstance(prepared, GradCamModel) and prepared.layer is prepared.model.last_conv  # BatchNorm folded
    assert not [m for m in prepared.modules() if isinstance(m, nn.BatchNorm3d)]
    ours = method.attribute(prepared, x, targets, ["a", "b", "c"])
    unprepared = GradCamModel(model, x[:1])
    assert unprepared.layer is model.features[-3]  # the BatchNorm fed by last_conv
    # TinyCNN, padding 1: conv 3 (centre +0), pool 2 (+0.5, step 2), conv 3 (+0), so units at 0.5 + 2j
    assert unprepared.grid == UnitGrid((0.5, 0.5, 0.5), (2.0, 2.0, 2.0))
    np.testing.assert_allclose(method.attribute(model, x, targets, ["a", "b", "c"]).numpy(), ours.numpy(),
                               atol=1e-5 * float(ours.abs().max()))
    captum_cam = LayerGradCam(OutputModel(model, output), model.features[-3]).attribute(
        x, target=targets, relu_attributions=True)[:, 0].detach()
    placed = captum_cam.numpy()
    for axis, size in enumerate(GRID):
        matrix = interpolation_matrix(size, placed.shape[axis + 1], 0.5, 2.0)
        placed = np.moveaxis(np.tensordot(placed, matrix, axes=([axis + 1], [1])), -1, axis + 1)
    cam = grad_cam(unprepared, x.clone().requires_grad_(True), targets, output).numpy()
    assert cam.max() > 0
    np.testing.assert_allclose(cam, placed, atol=1e-5 * cam.max())
    guided = GuidedBackprop(OutputModel(model, output)).attribute(x.clone().requires_grad_(True), target=targets)
    np.testing.assert_allclose(ours.numpy(), guided[:, 0].detach().numpy() * placed,
                               atol=1e-5 * float(ours.abs().max()))


def receptive_field_centre(model: nn.Module, layer_name: str, x: torch.Tensor, unit: tuple) -> np.ndarray:
    """Midpoint of the input voxels one unit of a layer depends on, measured on a probe copy of the model.

    The probe has positive weights, identity BatchNorms and average instead of
    max pooling, so the unit's input gradient at a positive input is positive
    over its whole receptive field (on this grid).
    """

    class Reached(Exception):
        pass

    probe = copy.deepcopy(model)
    for name, module in list(probe.named_modules()):
        if isinstance(module, nn.MaxPool3d):
            set_submodule(probe, name, nn.AvgPool3d(module.kernel_size, module.stride, module.padding,
                                                    ceil_mode=module.ceil_mode))
        elif isinstance(module, nn.BatchNorm3d):
            module.reset_parameters()
            module.reset_running_stats()
    for param in probe.parameters():
        param.copy_(param.abs() + 0.01)
    captured = []

    def stop(module, inputs, output):
        captured.append(output)
        raise Reached

    probe.get_submodule(layer_name).register_forward_hook(stop)
    inputs = torch.ones_like(x).requires_grad_(True)
    with pytest.raises(Reached), torch.enable_grad():
        probe(inputs)
    grad, = torch.autograd.grad(captured[0][(0, 0, *unit)], inputs)
    support = np.argwhere(grad[0, 0].numpy() > 0)
    return (support.min(axis=0) + support.max(axis=0)) / 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grad_cam_puts_a_unit_at_its_receptive_field_centre(name):
    """One unit of the layer's output forced on, the rest off: the CAM peaks at that unit's receptive-field centre.

    The CAM's maximum is reached within one voxel of the centre the probe
    measures, and the neighbouring units' centres get 0 (beyond the outermost
    centre of an axis the CAM keeps the border unit's value, a plateau).

    At 2 mm the stretched CAM (captum's upsampling, the old code) put the
    middle unit up to 28 voxels away from its centre (rieke2018: unit x = 1 of 0..3 at 35.9 instead of
    38.5, y = 2 of 0..5 at 47.4 instead of 50.5; wang2023: y = 1 of 0..2 at 56.9 instead of 62.5); every
    axis with more than one unit is checked (+-1 voxel). The unit is the lower middle one: its field is
    whole (a ceil-mode pooling window cut by the border shrinks the field the probe measures, while the
    geometric centre counts the cut part, as it counts zero padding).
    """
    shape = (97, 115, 97)
    torch.manual_seed(0)
    model = frozen(MODELS[name](shape))
    x = torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(0))
    prepared = METHODS["GGC"](HeatmapOptions(), context(batch=1, resolution=2.0)).prepare(model, x)
    layer_name = {m: n for n, m in model.named_modules()}[GradCamModel(model, x).layer]
    shapes = []
    handle = prepared.layer.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape))
    with torch.no_grad():
        prepared(x)
    handle.remove()
    units = tuple(shapes[0][2:])
    unit = tuple((n - 1) // 2 for n in units)
    forced = torch.zeros(shapes[0])
    forced[(0, 0, *unit)] = 10.0
    prepared.layer.register_forward_hook(lambda module, inputs, output: output * 0 + forced)
    cams = [grad_cam(prepared, x.clone().requires_grad_(True), torch.tensor([t]), "difference")[0] for t in (0, 1)]
    cam = max(cams, key=lambda c: float(c.max()))
    assert float(cam.max()) > 0 and float(min(c.max() for c in cams)) == 0  # difference: one sign per target
    centre = receptive_field_centre(model, layer_name, x, unit)
    peak = float(cam.max())
    at = [int(round(c)) for c in centre]
    for axis, n in enumerate(units):
        if n == 1:
            continue
        line = cam.numpy()[tuple(slice(None) if a == axis else at[a] for a in range(3))]
        near = line[max(0, int(np.floor(centre[axis])) - 1):int(np.ceil(centre[axis])) + 2]
        assert float(near.max()) == pytest.approx(peak), (name, axis, units, unit, centre, int(line.argmax()))
        low, high = (int(np.floor(centre[axis] - prepared.grid.step[axis])),
                     int(np.ceil(centre[axis] + prepared.grid.step[axis])))
        for neighbour, exists in ((low, unit[axis] > 0), (high, unit[axis] < n - 1)):
            if exists and 0 <= neighbour < shape[axis]:  # neighbouring units' centres (rounded outwards): 0
                assert line[neighbour] <= 1e-6 * peak, (name, axis, neighbour)


@pytest.mark.parametrize("kernel, padding", [(3, 0), (3, 1), ((5, 3, 3), (2, 0, 1))])
def test_fast_input_gradient_equals_torchs(kernel, padding):
    """The depthwise input gradient of a one-channel convolution equals torch's backward."""
    torch.manual_seed(0)
    model = frozen(nn.Sequential(nn.Conv3d(1, 6, kernel, padding=padding), nn.ReLU(), nn.Conv3d(6, 1, 3),
                                 nn.Conv3d(1, 2, 3, stride=2)))
    fast = with_fast_input_gradient(copy.deepcopy(model))
    assert [type(m).__name__ for m in fast] == ["SingleChannelConv3d", "ReLU", "Conv3d", "Conv3d"]  # not strided
    x = volumes(2)
    grads = []
    for net in (model, fast):
        inputs = x.clone().requires_grad_(True)
        out = net(inputs)
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), inputs)[0])
    assert float(grads[0].abs().max()) > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_lrp_epsilon_conserves_relevance_and_equals_captum():
    """Bias-free convs/linears and BatchNorm without shift (folded bias = 0): epsilon LRP conserves the logit."""
    model = random_model(seed=5, shift=False, bias=False)
    x, targets = volumes(3), torch.tensor([1, 0, 1])
    folded = fold_batchnorm(model, x[:1])
    relevance = lrp(folded, x, targets, "epsilon", 1e-9)
    logits = model(x).gather(1, targets[:, None])[:, 0]
    np.testing.assert_allclose(relevance.sum(dim=(1, 2, 3, 4)).numpy(), logits.numpy(), rtol=0.05)
    folded.features = nn.Sequential(*[m for m in folded.features if not isinstance(m, nn.Identity)])  # no rule
    for module in folded.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            module.rule = EpsilonRule(epsilon=1e-9)
    reference = CaptumLRP(folded).attribute(x.clone().requires_grad_(True), target=targets).detach()
    np.testing.assert_allclose(relevance.numpy(), reference.numpy(), atol=1e-5 * float(reference.abs().max()))


def test_lrp_alpha_beta_and_zplus_conserve_relevance_of_positive_inputs():
    """With positive inputs and no biases, alpha-beta relevance sums to (alpha - beta) * logit = logit."""
    model = random_model(seed=6, shift=False, bias=False)
    x = volumes(2).abs()
    targets = torch.tensor([0, 1])
    folded = fold_batchnorm(model, x[:1])
    logits = model(x).gather(1, targets[:, None])[:, 0]
    for rule in ("alphabeta", "zplus"):
        relevance = lrp(folded, x, targets, rule, 1e-9)
        positive = logits > 0
        sums = relevance.sum(dim=(1, 2, 3, 4))
        np.testing.assert_allclose(sums[positive].numpy(), logits[positive].numpy(), rtol=0.05)


def test_lrp_of_the_logit_difference_starts_from_a_differenced_head():
    """Default output: the last Linear computes z_t - z_o; epsilon LRP equals captum's on that head and conserves d.

    Bias-free layers and unshifted BatchNorms: the relevance sums to d. With
    ``probability`` the same map is scaled by p_t / d.
    """
    model = random_model(seed=5, shift=False, bias=False)
    x, targets = volumes(3), torch.tensor([1, 0, 1])
    folded = fold_batchnorm(model, x[:1])
    logits = model(x)
    difference = (logits.gather(1, targets[:, None]) - logits.gather(1, (1 - targets)[:, None]))[:, 0]
    relevance = lrp(folded, x, targets, "epsilon", 1e-9, "difference")
    np.testing.assert_allclose(relevance.sum(dim=(1, 2, 3, 4)).numpy(), difference.numpy(), rtol=0.05)
    head = difference_head(folded, x[:1])
    np.testing.assert_allclose(head(x).numpy(), (logits - logits.flip(1)).numpy(), atol=1e-5)
    head.features = nn.Sequential(*[m for m in head.features if not isinstance(m, nn.Identity)])
    for module in head.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            module.rule = EpsilonRule(epsilon=1e-9)
    reference = CaptumLRP(head).attribute(x.clone().requires_grad_(True), target=targets).detach()
    np.testing.assert_allclose(relevance.numpy(), reference.numpy(), atol=1e-5 * float(reference.abs().max()))
    probability = lrp(folded, x, targets, "epsilon", 1e-9, "probability")
    scale = (torch.sigmoid(difference) / difference)[:, None, None, None, None]
    np.testing.assert_allclose(probability.numpy(), (relevance * scale).numpy(),
                               atol=1e-6 * float(probability.abs().max()))


def test_explained_outputs_by_hand():
    """difference = z_t - z_o, logit = z_t, probability = sigmoid(d); drops of p stay exact near p = 1."""
    logits = torch.tensor([[1.0, 3.5], [2.0, -1.0]])
    targets = torch.tensor([1, 1])
    assert explained(logits, targets, "difference").tolist() == [2.5, -3.0]
    assert explained(logits, targets, "logit").tolist() == [3.5, -1.0]
    np.testing.assert_allclose(explained(logits, targets, "probability").numpy(),
                               [1 / (1 + np.exp(-2.5)), 1 / (1 + np.exp(3.0))], rtol=1e-6)
    np.testing.assert_allclose(OutputModel(nn.Identity(), "difference")(logits).numpy(), [[-2.5, 2.5], [3, -3]])
    clean, occluded = torch.tensor([[0.0, 40.0]]), torch.tensor([[0.0, 38.0]])
    one = torch.tensor([1])
    assert float(torch.softmax(clean, 1)[0, 1] - torch.softmax(occluded, 1)[0, 1]) == 0  # the old float32 drop
    exact = 1 / (1 + np.exp(-40.0)) - 1 / (1 + np.exp(-38.0))  # = e^-38 - e^-40 to first order, in float64
    exact = np.exp(-38.0) / (1 + np.exp(-38.0)) - np.exp(-40.0) / (1 + np.exp(-40.0)) if exact == 0 else exact
    np.testing.assert_allclose(float(output_drop(clean, occluded, one, "probability")), exact, rtol=1e-5)
    assert float(output_drop(clean, occluded, one, "difference")) == 2.0


def confident_model(x: torch.Tensor, gap: float = 40.0) -> tuple[nn.Module, torch.Tensor]:
    """A random TinyCNN whose last layer is scaled so that its smallest |z_1 - z_0| on ``x`` is ``gap``; predicted targets.

    (Seed 11: both scans of :func:`volumes` ``(2, seed=13)`` get gaps within 0.2 % of each other.)
    """
    model = random_model(seed=11)
    logits = model(x)
    last = model.head[-1]
    scale = gap / float((logits[:, 1] - logits[:, 0]).abs().min())
    last.weight.mul_(scale)
    last.bias.mul_(scale)
    logits = model(x)
    assert float((logits[:, 1] - logits[:, 0]).abs().min()) == pytest.approx(gap, rel=1e-4)
    return model, logits.argmax(1)


@pytest.mark.parametrize("name", method_names())
def test_a_confident_model_gets_informative_maps(name):
    """Logit gap >= 40 (p_target = 1 in float32): no map is zero everywhere (or, NoiseImportance, uniform).

    Before --explain-output the probability-based methods saturated: occlusion
    drops were exactly 0 and the saliency gradient lost its target term. For
    Saliency the map must be |grad (z_t - z_o)| itself.
    """
    x = volumes(2, seed=13)
    model, targets = confident_model(x)
    options = HeatmapOptions(occlusion_size=24.0, occlusion_stride=16.0, noise_steps=20, ig_steps=8)
    method = on_test_grid(name, options, context(batch=4))
    maps = method.attribute(method.prepare(model, x[:1]), x, targets, ["a", "b"], template=x.mean(0)[0])
    for row in maps:
        assert float(row.abs().max()) > 0
        if name == "NoiseImportance":
            assert float(row.std() / row.mean()) > 0.05
    if name == "Saliency":
        inputs = x.clone().requires_grad_(True)
        logits = model(inputs)
        d = logits.gather(1, targets[:, None]) - logits.gather(1, (1 - targets)[:, None])
        grad, = torch.autograd.grad(d.sum(), inputs)
        np.testing.assert_allclose(maps.numpy(), grad[:, 0].abs().numpy(), atol=1e-5 * float(grad.abs().max()))


@pytest.mark.parametrize("name", ["Saliency", "Occlusion"])
def test_probability_output_does_not_saturate_either(name):
    """--explain-output probability on the gap-40 model: tiny (p(1-p) ~ e^-40) but non-zero maps of the right shape."""
    x = volumes(2, seed=13)
    model, targets = confident_model(x)
    options = HeatmapOptions(occlusion_size=24.0, occlusion_stride=16.0)
    maps = {output: METHODS[name](HeatmapOptions(**{**dataclasses.asdict(options), "explain_output": output}),
                                  context(batch=4)).attribute(model, x, targets, ["a", "b"], template=x.mean(0)[0])
            for output in ("probability", "difference")}
    for row, reference in zip(maps["probability"], maps["difference"]):
        assert float(row.abs().max()) > 0
        assert np.corrcoef(row.flatten().numpy(), reference.flatten().numpy())[0, 1] > 0.95  # 0.98 measured


def test_lrp_splits_residual_sums_instead_of_doubling_them():
    torch.manual_seed(0)
    model = MODELS["resnet3d"]((32, 32, 32))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_var.uniform_(0.5, 2.0)
    model = frozen(model)
    x = torch.randn(2, 1, 32, 32, 32).abs()
    relevance = METHODS["LRP"](HeatmapOptions(lrp_rule="zplus"), context(batch=2)).attribute(
        model, x, torch.tensor([1, 1]), ["a", "b"])
    logits = model(x)[:, 1]
    ratio = relevance.sum(dim=(1, 2, 3)) / logits
    assert torch.all(ratio < 1.5), ratio  # counted twice at each of three residual sums: ratio ~ 8


@pytest.mark.parametrize("fill", ["template", "zero"])
@pytest.mark.parametrize("prepared", [True, False], ids=["split-at-input-layer", "whole-model"])
@pytest.mark.parametrize("padding", [0, 1], ids=["valid", "padded"])
def test_occlusion_equals_captum_clipped(prepared, padding, fill):
    """Prepared on the CPU, rows are built at the input layer's output; both ways equal captum (same fill)."""
    model = random_model(seed=7, padding=padding)
    x, targets = volumes(2), torch.tensor([1, 0])
    template = volumes(1, seed=21)[0, 0]
    options = HeatmapOptions(occlusion_size=24.0, occlusion_stride=16.0, occlusion_fill=fill)
    method = METHODS["Occlusion"](options, context(batch=7))
    prepared_model = method.prepare(model, x[:1]) if prepared else model
    assert isinstance(prepared_model, InputSplit) is prepared
    ours = method.attribute(prepared_model, x, targets, ["a", "b"], template=template)
    baselines = template[None, None].expand_as(x) if fill == "template" else 0
    reference = CaptumOcclusion(OutputModel(model, "difference")).attribute(
        x, sliding_window_shapes=(1, 6, 6, 6), strides=(1, 4, 4, 4), baselines=baselines, target=targets)
    assert float(ours.max()) > 1e-3
    np.testing.assert_allclose(ours.numpy(), reference[:, 0].clamp(min=0).numpy(), atol=1e-6)


@pytest.mark.parametrize("fill", ["template", "zero"])
@pytest.mark.parametrize("prepared", [True, False], ids=["split-at-input-layer", "whole-model"])
def test_area_occlusion_equals_captum_feature_ablation(prepared, fill):
    """Irregular regions (one touching the border): the drop painted into each region, as captum's FeatureAblation."""
    labels = torch.ones(GRID, dtype=torch.long)
    labels[4:9, 3:15, 2:7] = 2
    labels[10:, :6, 9:] = 3
    labels[(torch.arange(GRID[0])[:, None, None] + torch.arange(GRID[1])[None, :, None]
            + torch.arange(GRID[2])[None, None]) % 7 == 0] = 4  # scattered voxels with a grid-wide bounding box

    class Regions(METHODS["AreaOcclusion"]):
        def occluded_sets(self, shape, device):
            return [labels == value for value in range(1, 5)]

    model = random_model(seed=11, padding=1)
    x, targets = volumes(2), torch.tensor([0, 1])
    template = volumes(1, seed=21)[0, 0]
    method = Regions(HeatmapOptions(occlusion_fill=fill), context(batch=3))
    prepared_model = method.prepare(model, x[:1]) if prepared else model
    ours = method.attribute(prepared_model, x, targets, ["a", "b"], template=template)
    baselines = template[None, None].expand_as(x) if fill == "template" else 0
    reference = FeatureAblation(OutputModel(model, "difference")).attribute(
        x, target=targets, baselines=baselines, feature_mask=labels[None, None])
    assert float(ours.max()) > 1e-3
    np.testing.assert_allclose(ours.numpy(), reference[:, 0].clamp(min=0).numpy(), atol=1e-6)


def test_two_channel_inputs_get_one_map_per_channel_equal_to_captum():
    """--input both: every method returns (N, 2, X, Y, Z); gradients, IG and occlusion per channel equal captum's."""
    model = random_model(seed=12, padding=1, in_channels=2)
    x, targets, keys = volumes(2, seed=13, channels=2), torch.tensor([1, 0]), ["a", "b"]
    template = volumes(1, seed=14, channels=2)[0]
    options = HeatmapOptions(ig_steps=8, noise_steps=2, occlusion_size=24.0, occlusion_stride=16.0)
    maps = {}
    for name in method_names():
        method = on_test_grid(name, options, context(batch=3))
        maps[name] = method.attribute(method.prepare(model, x[:1]), x, targets, keys, template=template)
        assert maps[name].shape == (2, 2, *GRID), name
        assert float(maps[name][:, 1].abs().max()) > 0, name  # the second channel is explained too
    wrapped = OutputModel(model, "difference")
    inputs = x.clone().requires_grad_(True)
    saliency = Saliency(wrapped).attribute(inputs, target=targets, abs=True)
    np.testing.assert_allclose(maps["Saliency"].numpy(), saliency.numpy(), atol=1e-5 * float(saliency.max()))
    ig = IntegratedGradients(wrapped, multiply_by_inputs=True).attribute(
        x, baselines=template[None].expand_as(x), target=targets, n_steps=8, method="gausslegendre")
    np.testing.assert_allclose(maps["IG"].numpy(), ig.numpy(), atol=1e-4 * float(ig.abs().max()))
    occlusion = CaptumOcclusion(wrapped).attribute(x, sliding_window_shapes=(1, 6, 6, 6), strides=(1, 4, 4, 4),
                                                   baselines=template[None].expand_as(x), target=targets)
    np.testing.assert_allclose(maps["Occlusion"].numpy(), occlusion.clamp(min=0).numpy(), atol=1e-6)


@pytest.mark.parametrize("name", method_names())
def test_maps_do_not_depend_on_batch_composition(name):
    """A scan's map is bitwise identical alone, in a batch of others, and in another position."""
    model = random_model(seed=8)
    x, targets, keys = volumes(5), torch.tensor([1, 0, 1, 1, 0]), ["a", "b", "c", "d", "e"]
    options = HeatmapOptions(ig_steps=6, noise_steps=3, occlusion_size=32.0, occlusion_stride=32.0)
    method = on_test_grid(name, options, context(batch=4))
    model = method.prepare(model, x[:1])
    template = volumes(1, seed=21)[0, 0]
    together = method.attribute(model, x, targets, keys, template=template)
    alone = method.attribute(model, x[3:4], targets[3:4], keys[3:4], template=template)
    reordered = method.attribute(model, x[[3, 0]], targets[[3, 0]], [keys[3], keys[0]], template=template)
    assert together.shape == (5, *GRID)
    assert torch.equal(together[3], alone[0]) and torch.equal(together[3], reordered[0])
    assert torch.equal(together[0], reordered[1])
    assert float(together[3].abs().sum()) > 0
    if METHODS[name].signed is False:
        assert float(together.min()) >= 0


def test_noise_importance_uses_per_scan_seeds():
    assert scan_seed(1, "sub-01") == scan_seed(1, "sub-01") != scan_seed(1, "sub-02") != scan_seed(2, "sub-01")
    model = random_model(seed=9)
    x = volumes(1)
    method = lambda seed: METHODS["NoiseImportance"](HeatmapOptions(noise_steps=3), context(seed=seed))  # noqa: E731
    first = method(1).attribute(model, x, torch.tensor([1]), ["sub-01"])
    assert torch.equal(first, method(1).attribute(model, x, torch.tensor([1]), ["sub-01"]))
    assert not torch.equal(first, method(2).attribute(model, x, torch.tensor([1]), ["sub-01"]))
    assert float(first.min()) >= 0 and float(first.max()) <= 1


# --------------------------------------------------------------------------- ground truth


def train_tiny(cohort, work_dir, epochs: int = 60, noise: float = 3.0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Full-batch training of a TinyCNN (8 mm after its first pooling) on every labelled scan.

    Gaussian input noise and weight decay keep the model from fitting 12 scans
    by scattered voxels; heatmaps are derived in-sample (they test the methods,
    not generalisation). Two conv blocks: with a third, the last convolution's
    grid was 1-2 voxels per axis, where Grad-CAM has nothing to localise (its
    maps were all zero for every AD scan; the other methods passed).
    """
    from adheat_app.volumes import load_volumes

    scans = cohort.labelled
    x = torch.from_numpy(np.asarray(load_volumes([s.image for s in scans], work_dir), np.float32))[:, None]
    y = torch.tensor([s.target for s in scans])
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = TinyCNN(tuple(x.shape[2:]), channels=(4, 8), downsample=2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for _ in range(epochs):
        model.train()
        optimiser.zero_grad()
        noisy = x + noise * torch.randn(x.shape, generator=generator)
        nn.functional.cross_entropy(model(noisy), y).backward()
        optimiser.step()
    return frozen(model), x, y


def ground_truth_ratios(tmp_path_factory, null: bool) -> tuple[dict[str, float], float]:
    root = tmp_path_factory.mktemp("null" if null else "planted")
    # z-scored inputs, the scale train_tiny's noise is set for (the product's defaults are tested in test_defaults)
    _, derivs, cohort, truth = make_preprocessed_cohort(root, n_subjects=12, seed=1, effect_size=0.4, null=null,
                                                        preprocessing__intensity_norm="zscore")
    model, x, y = train_tiny(cohort, root / "work")
    accuracy = float((model(x).argmax(1) == y).float().mean())
    ad = y == 1
    brain = truth.template.mask_array()
    options = HeatmapOptions(ig_steps=16, occlusion_size=20.0, occlusion_stride=20.0)
    ratios = {}
    for name in GROUND_TRUTH:
        method = METHODS[name](options, context(batch=8))
        maps = method.attribute(method.prepare(model, x[:1]), x[ad], y[ad], [""] * int(ad.sum()),
                                template=x.mean(0)[0])  # the model was trained on every scan
        ratios[name] = relevance_ratio(maps.numpy(), truth.region, brain)
    return ratios, accuracy


@pytest.mark.slow
def test_heatmaps_find_the_planted_atrophy(tmp_path_factory):
    ratios, accuracy = ground_truth_ratios(tmp_path_factory, null=False)
    assert accuracy >= 0.9
    failing = {name: ratio for name, ratio in ratios.items() if not ratio >= 3.0}
    assert not failing, ratios


@pytest.mark.slow
def test_heatmaps_find_nothing_in_a_null_cohort(tmp_path_factory):
    ratios, _ = ground_truth_ratios(tmp_path_factory, null=True)
    for name, ratio in ratios.items():
        assert not ratio >= 3.0, (name, ratios)  # NaN: the method gave all-zero maps (GGC of a null model)


@pytest.mark.slow
def test_permuted_label_models_give_maps_unlike_the_real_ones(tmp_path_factory):
    """Adebayo et al.'s data randomisation: the same training on permuted labels loses the planted region.

    Same scans, same training, labels permuted across subjects
    (:func:`permuted_cohort`): IG and Saliency of the real model point at the
    planted atrophy, those of the permuted-label model do not, and the two
    models' mean maps hardly rank voxels alike. Measured (relevance ratio
    real / permuted, Spearman of the mean |maps|): IG 10.3 / 1.8, 0.50;
    Saliency 6.2 / 0.9, 0.12. About 60 s on a quiet 2-core machine (two
    trainings), 230 s under load.
    """
    from scipy.stats import spearmanr

    root = tmp_path_factory.mktemp("permuted")
    _, _, cohort, truth = make_preprocessed_cohort(root, n_subjects=12, seed=1, effect_size=0.4,
                                                   preprocessing__intensity_norm="zscore")
    permuted, unchanged = permuted_cohort(cohort, seed=0)
    assert sorted(permuted.targets()) == sorted(cohort.targets()) and unchanged < 1
    assert permuted_cohort(cohort, seed=0)[0] == permuted  # seeded
    real, x, y = train_tiny(cohort, root / "work")
    control, _, _ = train_tiny(permuted, root / "work")
    ad = y == 1
    brain = truth.template.mask_array()
    for name in ("IG", "Saliency"):
        method = METHODS[name](HeatmapOptions(ig_steps=16), context(batch=8))
        maps = {label: method.attribute(method.prepare(model, x[:1]), x[ad], y[ad], [""] * int(ad.sum()),
                                        template=x.mean(0)[0]).numpy()
                for label, model in (("real", real), ("permuted", control))}
        ratios = {label: relevance_ratio(m, truth.region, brain) for label, m in maps.items()}
        similarity = spearmanr(np.abs(maps["real"]).mean(0)[brain], np.abs(maps["permuted"]).mean(0)[brain])[0]
        assert ratios["real"] >= 3.0 and ratios["permuted"] < 0.5 * ratios["real"], (name, ratios)
        assert similarity < 0.7, (name, similarity)  # anatomy alone makes gradient magnitudes alike


# --------------------------------------------------------------------------- runner

RUN = {"training__model": "resnet3d", "training__folds": 2, "training__steps": 0, "training__epochs": 3,
       "training__batch_size": 4, "training__learning_rate": 1e-3,
       "heatmaps__methods": ("IG", "LRP", "GGC", "Saliency", "GuidedBackprop", "Occlusion", "NoiseImportance"),
       "heatmaps__ig_steps": 8, "heatmaps__noise_steps": 3, "heatmaps__occlusion_size": 80.0,
       "heatmaps__occlusion_stride": 80.0, "heatmaps__heatmap_batch_size": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 10-subject cohort (plus one MCI) with two trained folds, and the group-level heatmaps."""
    from adheat_app.training import run_training

    root = tmp_path_factory.mktemp("runner")
    config, derivs, cohort, _ = make_preprocessed_cohort(root, n_subjects=10, seed=4, effect_size=0.4, n_mci=1,
                                                         **RUN)
    assert run_training(config, derivs, cohort) == [0, 1]
    run_heatmaps(config, derivs, cohort)
    return config, derivs, cohort


def participant_copy(config, derivs, cohort, scans, out):
    """A fresh output folder holding only ``scans``' preprocessed images, models taken from ``config``."""
    from adheat_app.cohort import load_cohort

    second = dataclasses.replace(config.replace("heatmaps", models=str(config.models_dir)), output_dir=out,
                                 analysis_level=("participant",))
    derivs2 = Derivatives(out, config.bids_dir)
    derivs2.initialize()
    for scan in scans:
        for path in (scan.image, scan.mask):
            for source in (path, sidecar_path(path)):
                target = out / source.relative_to(derivs.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    inputs = [T1wInput(s.subject, s.session, config.bids_dir / f"sub-{s.subject}" / "anat") for s in scans]
    return second, derivs2, load_cohort(second, derivs2, inputs)


@pytest.mark.slow
def test_group_heatmaps_are_out_of_fold_with_complete_sidecars(trained):
    from adheat_app.training import fold_dir, read_split

    config, derivs, cohort = trained
    test_fold = {}
    for k in (0, 1):
        split = read_split(fold_dir(config, k))
        test_fold.update({s: k for s in split.loc[split["set"] == "test", "subject"]})
    for scan in cohort.scans:
        for name in RUN["heatmaps__methods"]:
            path = heatmap_file(derivs, cohort, scan, name)
            img = nib.load(path)
            assert img.get_data_dtype() == np.float32 and img.shape == nib.load(scan.image).shape
            side = read_json(sidecar_path(path))
            assert side["Fold"] == test_fold.get(scan.subject, "mean")
            assert side["Method"] == name and side["Model"] == "resnet3d" and side["Signed"] == METHODS[name].signed
            assert side["TargetClass"] == 1  # --target positive (default)
            assert 0 <= side["PredictedProbability"] <= 1 and side["TrueLabel"] == scan.diagnosis
            for key in ("Parameters", "Seed", "Software", "WallTimeSeconds", "Sources", "TargetLabel"):
                assert key in side
            assert np.isfinite(np.asarray(img.dataobj)).all()
            assert side["ExplainedOutput"] == side["Parameters"]["Output"] == "difference"
            assert side["AllZero"] is (not np.any(np.asarray(img.dataobj)))
    mci = [s for s in cohort.scans if s.diagnosis == "MCI"]
    assert mci and read_json(sidecar_path(heatmap_file(derivs, cohort, mci[0], "IG")))["FoldsAveraged"] == [0, 1]
    for scan in cohort.scans:  # the fold mean (MCI) records the larger delta of its fold models
        assert read_json(sidecar_path(heatmap_file(derivs, cohort, scan, "IG")))["IGConvergenceDelta"] >= 0
    for k in (0, 1):  # the 'template' baseline and fill: the mean of the fold's training scans only
        split = read_split(fold_dir(config, k))
        train = set(split.loc[split["set"] == "train", "subject"])
        path = fold_dir(config, k) / "training_mean.nii.gz"
        expected = np.mean([np.asarray(nib.load(s.image).dataobj, np.float64) for s in cohort.scans
                            if s.subject in train], axis=0)
        np.testing.assert_allclose(np.asarray(nib.load(path).dataobj), expected, atol=5e-3)  # float16 cache
        assert read_json(sidecar_path(path))["NScans"] == len(train)
        assert not train & {s for s, fold in test_fold.items() if fold == k}


@pytest.mark.slow
def test_participant_and_group_paths_write_identical_files_and_reruns_skip(trained, tmp_path):
    config, derivs, cohort = trained
    scans = [cohort.labelled[0], next(s for s in cohort.scans if s.diagnosis == "MCI")]
    config2, derivs2, cohort2 = participant_copy(config, derivs, cohort, scans, tmp_path / "out2")
    run_heatmaps(config2, derivs2, cohort2)
    for scan, scan2 in zip(scans, cohort2.scans):
        for name in RUN["heatmaps__methods"]:
            first = np.asarray(nib.load(heatmap_file(derivs, cohort, scan, name)).dataobj)
            second = np.asarray(nib.load(heatmap_file(derivs2, cohort2, scan2, name)).dataobj)
            assert np.array_equal(first, second), (scan.key, name)
    stamps = {p: p.stat().st_mtime_ns for p in derivs2.root.rglob("*_heatmap.*")}
    run_heatmaps(config2, derivs2, cohort2)
    assert {p: p.stat().st_mtime_ns for p in derivs2.root.rglob("*_heatmap.*")} == stamps
    changed = config2.replace("heatmaps", ig_steps=4, methods=("IG", "Saliency"))
    run_heatmaps(changed, derivs2, cohort2)
    redone = {p for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert redone and all("desc-IG_" in p.name for p in redone)


@pytest.mark.slow
def test_sanity_check_draws_scans_from_every_fold_and_compares_with_the_input(trained, tmp_path):
    """10 scans, 5 from each fold's test set, each fold model randomised; similarity to trained maps and to |input|."""
    config, derivs, cohort = trained
    config2, derivs2, cohort2 = participant_copy(config, derivs, cohort, cohort.labelled, tmp_path / "out3")
    config2 = config2.replace("heatmaps", methods=("Saliency", "GGC"), sanity_check=True)
    run_heatmaps(config2, derivs2, cohort2)
    sanity_check(config2, derivs2, cohort2)
    table = pd.read_csv(derivs2.root / "group" / "sanity_check.tsv", sep="\t", keep_default_na=False)
    assert set(table["method"]) == {"Saliency", "GGC"}
    assert {"layer", "spearman", "spearman_input", "drop_layer", "flagged", "step"} <= set(table.columns)
    assert (table["n_scans"] == 10).all() and (table["folds"].astype(str) == "0,1").all()
    assert (table.groupby("method")["step"].max() == 11).all()  # resnet3d: 10 convolutions and 1 linear
    saliency = table[table["method"] == "Saliency"]
    assert saliency["layer"].iloc[0] == "trained" and saliency["spearman"].iloc[0] == pytest.approx(1.0)
    assert saliency["spearman"].iloc[-1] < 0.9 and not saliency["flagged"].any()
    below = saliency.loc[(saliency["step"] > 0) & (saliency["spearman"] < 0.5), "layer"]
    assert saliency["drop_layer"].iloc[0] == below.iloc[0]  # the first randomised layer below 0.5
    assert table["spearman_input"].between(-1, 1).all()
    sides = [read_json(sidecar_path(heatmap_file(derivs2, cohort2, s, "Saliency"))) for s in cohort2.labelled]
    checks = [side["SanityCheck"] for side in sides if "SanityCheck" in side]
    assert len(checks) == 10 and {"Layers", "InputSimilarity", "DropBelowHalfAt", "Flagged"} <= set(checks[0])
    assert len(checks[0]["Layers"]) == 11 and len(checks[0]["InputSimilarity"]) == 12
    # <Method>Random: every explained scan's map of its fold model with every layer re-initialised
    from adheat_app.attribution.sanity import cascade, learned_layers
    from adheat_app.training import fold_dir, load_fold_model

    scan = cohort2.labelled[0]
    path = heatmap_file(derivs2, cohort2, scan, "SaliencyRandom")
    side = read_json(sidecar_path(path))
    assert side["Parameters"]["Control"] == "randomised model" and side["Method"] == "SaliencyRandom"
    assert all(heatmap_file(derivs2, cohort2, s, f"{m}Random").is_file() for s in cohort2.labelled
               for m in ("Saliency", "GGC"))
    model, _ = load_fold_model(fold_dir(config2, side["Fold"]), torch.device("cpu"))
    model = channels_last(frozen(model))  # as the runner holds it (re-initialisation fills memory order)
    x = torch.from_numpy(np.asarray(nib.load(scan.image).dataobj, dtype=np.float16).astype(np.float32))[None, None]
    layers = learned_layers(model, x)
    randomised = cascade(model, layers, len(layers), config2.execution.seed)
    method = METHODS["Saliency"](config2.heatmaps, context())
    expected = method.attribute(method.prepare(randomised, x), x, torch.tensor([side["TargetClass"]]), [scan.key])
    np.testing.assert_allclose(np.asarray(nib.load(path).dataobj), expected[0].numpy(), rtol=1e-3,
                               atol=1e-3 * float(expected.abs().max()))
    trained_map = np.asarray(nib.load(heatmap_file(derivs2, cohort2, scan, "Saliency")).dataobj)
    assert not np.allclose(trained_map, expected[0].numpy(), atol=1e-3 * float(np.abs(trained_map).max()))
    # <Method>PermutedLabels: fold models trained on permuted labels, on the same folds
    from adheat_app.layout import permuted_labels_models_dir, trained_folds
    from adheat_app.training import read_split

    permuted_models = permuted_labels_models_dir(config2.models_dir)
    assert trained_folds(permuted_models, config2.training.model) == [0, 1]
    for k in (0, 1):
        real, control = (read_split(fold_dir(c, k)) for c in (config2, permuted_labels_config(config2)))
        assert real[["subject", "set"]].equals(control[["subject", "set"]])
    side = read_json(sidecar_path(heatmap_file(derivs2, cohort2, scan, "SaliencyPermutedLabels")))
    assert side["Method"] == "SaliencyPermutedLabels" and 0 <= side["Parameters"]["LabelsUnchanged"] < 1
    assert side["Parameters"]["Control"].startswith("model trained on permuted labels")
    assert any("/permutedlabels/" in source for source in side["Sources"])
    assert all(heatmap_file(derivs2, cohort2, s, f"{m}PermutedLabels").is_file() for s in cohort2.labelled
               for m in ("Saliency", "GGC"))
    # scored as controls, and beside each method in the answer
    from adheat_app.evaluation.workflow import run_evaluation
    from adheat_app.templates import get_template

    run_evaluation(config2.replace("evaluation", n_bootstrap=50), derivs2, cohort2,
                   get_template(config2.execution.resolution, cohort2.space))
    overlap = pd.read_csv(derivs2.root / "group" / "overlap.tsv", sep="\t")
    assert set(overlap.loc[overlap["method"].str.endswith("Random"), "kind"]) == {"control"}
    assert set(overlap.loc[overlap["method"].str.endswith("PermutedLabels"), "kind"]) == {"control"}
    answer = pd.read_csv(derivs2.root / "group" / "answer.tsv", sep="\t").set_index(["method", "reference", "sign"])
    assert set(answer.index.get_level_values("method")) == {"Saliency", "GGC"}
    assert answer["vs_random"].notna().all() and answer["above_random"].isin([True, False]).all()


@pytest.mark.slow
def test_faithfulness_table_of_the_out_of_fold_maps(trained, caplog):
    """--faithfulness: every order and unit kind of the Saliency maps, each scan perturbed by its own fold model;
    every step of the curves in their own table, drawn, the fill recorded; a rerun with the same inputs skips,
    another fill recomputes."""
    from adheat_app.evaluation.faithfulness import CURVE_COLUMNS, STEPS, run_faithfulness
    from adheat_app.layout import FAITHFULNESS, FAITHFULNESS_CURVES, faithfulness_figure, group_table

    config, derivs, cohort = trained
    config = config.replace("heatmaps", methods=("Saliency",)).replace("evaluation", faithfulness=True,
                                                                        n_bootstrap=50)
    table = run_faithfulness(config, derivs, cohort)
    assert set(table["method"]) == {"Saliency"} and len(table) == 6  # 2 unit kinds x 3 orders
    assert (table["n_subjects"] == 10).all() and table["deletion_aopc_ci_low"].notna().all()
    written = pd.read_csv(group_table(derivs.root, FAITHFULNESS), sep="\t")
    assert set(written["order"]) == {"morf", "lerf", "random"}
    sidecar = read_json(sidecar_path(group_table(derivs.root, FAITHFULNESS)))
    assert sidecar["NScans"] == 10 and sidecar["Fill"] == "mean"
    curves = pd.read_csv(group_table(derivs.root, FAITHFULNESS_CURVES), sep="\t")
    assert list(curves.columns) == list(CURVE_COLUMNS) and len(curves) == 6 * 2 * (STEPS + 1)
    assert curves["ci_low"].notna().all() and curves.loc[curves["step"] == 0, "removed"].eq(0).all()
    first = curves[(curves["direction"] == "deletion") & (curves["step"] == 0)]["output"]
    np.testing.assert_allclose(first, first.iloc[0])  # every order starts at the clean scans
    assert read_json(sidecar_path(group_table(derivs.root, FAITHFULNESS_CURVES)))["Fill"] == "mean"
    assert faithfulness_figure(derivs.root).read_bytes()[:4] == b"\x89PNG"
    assert read_json(sidecar_path(faithfulness_figure(derivs.root)))["Fill"] == "mean"
    before = group_table(derivs.root, FAITHFULNESS).stat().st_mtime_ns
    with caplog.at_level("INFO", logger="adheat_app.evaluation.faithfulness"):
        again = run_faithfulness(config, derivs, cohort)
    assert "is up to date" in caplog.text and group_table(derivs.root, FAITHFULNESS).stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again, written)
    few = dataclasses.replace(cohort, scans=cohort.scans[:3])  # the imputation costs ~3 s per scan and map
    road = run_faithfulness(config.replace("evaluation", faithfulness_fill="noisy-linear"), derivs, few)
    assert len(road) == 6 and read_json(sidecar_path(group_table(derivs.root, FAITHFULNESS)))["Fill"] == \
        "noisy-linear"
    assert read_json(sidecar_path(faithfulness_figure(derivs.root)))["Fill"] == "noisy-linear"


@pytest.mark.slow
def test_group_maps_say_which_classes_they_explain(trained, tmp_path, caplog):
    """--target positive (default): 'all' averages explanations of the positive class only; --target true mixes
    AD-class maps of AD scans with CN-class maps of CN scans, and the group map says so."""
    from adheat_app.evaluation.group_maps import load_method
    from adheat_app.templates import get_template

    config, derivs, cohort = trained
    template = get_template(config.execution.resolution, cohort.space)
    maps = load_method(derivs, cohort, template, "Saliency", {})
    n_ad = sum(s.diagnosis == "AD" for s in cohort.scans)
    n_labelled = len(cohort.labelled)
    assert maps.target_classes("all") == {"AD": n_labelled} and maps.target_classes("CN") == {"AD": n_labelled - n_ad}
    config2, derivs2, cohort2 = participant_copy(config, derivs, cohort, cohort.labelled[:4], tmp_path / "out5")
    run_heatmaps(config2.replace("heatmaps", methods=("Saliency",), target="true"), derivs2, cohort2)
    with caplog.at_level("WARNING"):
        mixed = load_method(derivs2, cohort2, template, "Saliency", {})
    counts = {label: sum(s.diagnosis == label for s in cohort2.labelled) for label in ("AD", "CN")}
    assert mixed.target_classes("all") == counts and min(counts.values()) > 0
    assert "averages explanations of different classes" in caplog.text


@pytest.mark.slow
def test_participant_level_without_the_training_mean_fails_with_the_fix(trained, tmp_path):
    """The 'template' baseline needs each fold's training mean; a participant run cannot compute it from its scans."""
    config, derivs, cohort = trained
    models = tmp_path / "models"
    shutil.copytree(config.models_dir, models)
    for path in models.rglob("training_mean.*"):
        path.unlink()
    config2, derivs2, cohort2 = participant_copy(config, derivs, cohort, cohort.labelled[:2], tmp_path / "out6")
    config2 = config2.replace("heatmaps", models=str(models), methods=("IG",))
    with pytest.raises(InputError, match="training_mean.nii.gz is missing.*--ig-baseline zero"):
        run_heatmaps(config2, derivs2, cohort2)
    run_heatmaps(config2.replace("heatmaps", ig_baseline="zero"), derivs2, cohort2)  # no template needed: runs
    assert read_json(sidecar_path(heatmap_file(derivs2, cohort2, cohort2.scans[0], "IG")))["Parameters"]["Baseline"] == "zero"


@pytest.mark.slow
def test_native_space_maps_go_through_the_inverse_transform(trained, tmp_path, monkeypatch):
    """--native-space hands each map and the scan's raw T1w to preprocess.to_native and writes space-T1w."""
    import adheat_app.preprocess

    calls = []

    def fake_to_native(img, derivs, t1w, interpolation="linear"):
        calls.append(t1w)
        return nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], nib.load(t1w.path).affine)

    monkeypatch.setattr(adheat_app.preprocess, "to_native", fake_to_native)
    config, derivs, cohort = trained
    config2, derivs2, cohort2 = participant_copy(config, derivs, cohort, cohort.labelled[:1], tmp_path / "out4")
    run_heatmaps(config2.replace("heatmaps", methods=("Saliency",), native_space=True), derivs2, cohort2)
    scan = cohort2.scans[0]
    assert [c.path for c in calls] == [config.bids_dir / f"sub-{scan.subject}" / "anat" / f"sub-{scan.subject}_T1w.nii.gz"]
    native = derivs2.subject_path(scan.subject, scan.session, "heatmap", space="T1w", desc="Saliency")
    assert native.is_file() and read_json(sidecar_path(native))["Space"] == "T1w"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["true", "predicted", "positive"])
def test_target_option_picks_the_explained_class(trained, tmp_path, target):
    """--target true explains the subject's class, predicted the model's choice, positive always AD. Where the
    class is the one the group run explained, the map equals the group run's bit for bit; elsewhere IG of the
    logit difference is exactly negated, and Saliency (|gradient|) is unchanged."""
    config, derivs, cohort = trained
    config2, derivs2, cohort2 = participant_copy(config, derivs, cohort, cohort.labelled, tmp_path / target)
    run_heatmaps(config2.replace("heatmaps", methods=("IG", "Saliency"), target=target), derivs2, cohort2)
    counts = {"same": 0, "other": 0}
    for scan, scan2 in zip(cohort.labelled, cohort2.scans):
        side = read_json(sidecar_path(heatmap_file(derivs2, cohort2, scan2, "IG")))
        expected = {"true": scan.target, "positive": 1}.get(target, int(side["PredictedProbability"] >= 0.5))
        assert side["TargetClass"] == expected and side["TargetLabel"] == ("AD" if expected else "CN")
        group_class = read_json(sidecar_path(heatmap_file(derivs, cohort, scan, "IG")))["TargetClass"]
        for name in ("IG", "Saliency"):
            first = np.asarray(nib.load(heatmap_file(derivs, cohort, scan, name)).dataobj)
            second = np.asarray(nib.load(heatmap_file(derivs2, cohort2, scan2, name)).dataobj)
            scale = 1e-5 * float(np.abs(first).max())
            if expected == group_class:
                assert np.array_equal(first, second), (scan.key, name)
            elif name == "IG" and config.heatmaps.explain_output == "difference":  # z_o - z_t = -(z_t - z_o)
                np.testing.assert_allclose(second, -first, rtol=1e-4, atol=scale, err_msg=scan.key)
            elif name == "IG":
                assert not np.allclose(first, second), scan.key
            else:
                np.testing.assert_allclose(second, first, rtol=1e-3, atol=scale, err_msg=scan.key)
        counts["same" if expected == group_class else "other"] += 1
    if target == config.heatmaps.target:
        assert counts["other"] == 0
    elif target != "predicted":  # true vs positive differ on every CN scan
        assert counts["other"] == sum(s.target == 0 for s in cohort.labelled)


def test_no_amp_reaches_the_heatmaps():
    """--no-amp turns mixed precision off in the heatmaps' forward-only passes too; it only ever applies on CUDA."""
    cuda = torch.device("cuda")
    assert MethodContext(4.0, "MNI152NLin2009cAsym", 2, 0, cuda).amp
    assert not MethodContext(4.0, "MNI152NLin2009cAsym", 2, 0, cuda, mixed_precision=False).amp
    assert not MethodContext(4.0, "MNI152NLin2009cAsym", 2, 0, CPU).amp
