"""LRP's composite rule (``--lrp-rule epsilonplusflat``) against zennit's ``EpsilonPlusFlat``, on every model.

zennit is the reference implementation (a test dependency). Its package
``__init__`` imports ``zennit.torchvision``, which imports torchvision; PyPI's
torchvision does not import beside the CPU build of torch (``operator
torchvision::nms does not exist``). The modules used here (composites,
canonizers, attribution, layer; they import only torch) are loaded under a bare
``zennit`` package object (:func:`zennit_module`), so zennit's own code runs
without its torchvision part.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import operator
import sys
import types

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import MethodContext
from adheat_app.config import HeatmapOptions
from adheat_app.models import MODELS
from adheat_app.models.resnet3d import BasicBlock

GRID = (49, 58, 49)
EPSILON = 1e-6


def zennit_module(name: str) -> types.ModuleType:
    """``zennit.<name>`` imported without running zennit's package ``__init__`` (see the module docstring)."""
    if "zennit" not in sys.modules:
        spec = importlib.util.find_spec("zennit")
        assert spec is not None, "zennit is a test dependency: pip install -e '.[test]'"
        package = types.ModuleType("zennit")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["zennit"] = package
    return importlib.import_module(f"zennit.{name}")


def residual_canonizer():
    """zennit's way for residual blocks (as its torchvision ResNet canonizer): the sum goes through ``Sum``."""
    canonizers, layer = zennit_module("canonizers"), zennit_module("layer")

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.canonizer_sum(torch.stack([out, self.shortcut(x)], dim=-1)))

    def attributes(name, module):
        if isinstance(module, BasicBlock):
            return {"forward": forward.__get__(module), "canonizer_sum": layer.Sum()}
        return None

    return canonizers.AttributeCanonizer(attributes)


def residual_additions(model: nn.Module) -> int:
    """Tensor additions in the model's traced forward (residual sums)."""
    graph = torch.fx.symbolic_trace(model).graph
    return sum(1 for node in graph.nodes if node.op == "call_function" and node.target in (operator.add, torch.add))


def trained_like(name: str, channels: int) -> nn.Module:
    """Model ``name`` with seeded weights, non-trivial BatchNorm statistics and biases, eval mode, frozen."""
    torch.manual_seed(3)
    model = MODELS[name](GRID, channels)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.eps = 0.0  # zennit's merged BatchNorm computes x / sqrt(1 + eps), the identity only at eps = 0
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def differenced(model: nn.Module) -> nn.Module:
    """A copy whose last Linear computes ``z_t - z_o`` (the explained output adheat starts LRP from)."""
    copied = copy.deepcopy(model)
    last = [m for m in copied.modules() if isinstance(m, nn.Linear)][-1]
    last.weight.copy_(last.weight - last.weight.flip(0))
    last.bias.copy_(last.bias - last.bias.flip(0))
    return copied


def zennit_relevance(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """zennit's EpsilonPlusFlat relevance of ``x`` from each row's target output (its value as the start)."""
    composites, canonizers = zennit_module("composites"), zennit_module("canonizers")
    attribution = zennit_module("attribution")
    used = [canonizers.SequentialMergeBatchNorm()]
    if residual_additions(model):
        assert any(isinstance(m, BasicBlock) for m in model.modules()), \
            "a model with residual sums needs its block's zennit canonizer here"
        used.append(residual_canonizer())
    composite = composites.EpsilonPlusFlat(epsilon=EPSILON, stabilizer=EPSILON, canonizers=used)
    onehot = nn.functional.one_hot(targets, 2).float()
    with attribution.Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, attr_output=lambda output: onehot * output)
    return relevance


#: Every model with the defaults (logit difference, two input channels); the target logit of one channel on the
#: fast models too (wang2023 takes 10-15 s per case).
CASES = [*((name, "difference", 2) for name in sorted(MODELS)),
         *((name, "logit", 1) for name in sorted(MODELS) if name != "wang2023")]


@pytest.mark.parametrize("name, output, channels", CASES)
def test_lrp_composite_equals_zennits_epsilon_plus_flat(name, output, channels):
    """adheat's composite (BatchNorm folded, split residual sums, batched hooks) equals zennit's on every model.

    Both explain the same output: the target logit, or the logit difference
    (zennit gets the model with its last layer differenced by hand).
    Measured: largest difference 2e-6 of the largest relevance in float32
    (4e-8 in float64).
    """
    model = trained_like(name, channels)
    x = torch.randn((2, channels, *GRID), generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([1, 0])
    reference = zennit_relevance(differenced(model) if output == "difference" else model, x.clone(), targets)
    options = HeatmapOptions(lrp_rule="epsilonplusflat", lrp_epsilon=EPSILON, explain_output=output)
    method = METHODS["LRP"](options, MethodContext(4.0, "MNI152NLin2009cAsym", 2, 0, torch.device("cpu")))
    ours = method.attribute(method.prepare(model, x[:1]), x, targets, ["a", "b"])
    ours = ours if channels > 1 else ours[:, None]
    scale = float(reference.abs().max())
    assert scale > 0
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5 * scale)
    sums = reference.flatten(1).sum(1)
    np.testing.assert_allclose(ours.flatten(1).sum(1).numpy(), sums.numpy(), rtol=1e-3)
