"""Canonization: equivalent rewrites of a trained model that attribution methods rely on.

:func:`fold_batchnorm`: a BatchNorm in evaluation mode is an affine map per
channel, so it is merged into the preceding Conv3d (``w' = w * g / s``,
``b' = (b - mu) * g / s + beta`` with ``s = sqrt(var + eps)``) and replaced by
``nn.Identity``. LRP needs it (its rules are defined for linear layers
followed by activations); the other gradient methods run the folded model
because it computes the same function without the BatchNorms' forward and
backward passes over every activation. Which convolution feeds which
BatchNorm is read from one traced forward pass (the BatchNorm's input must be
exactly that convolution's output), not from declaration order.
The folded copy is checked against the original on the example input.

:func:`split_input_layer` (IG, occlusion): the model as ``rest(layer(x))``
where ``layer`` is the (BatchNorm-folded) convolution that alone reads the
input. The layer is affine, so along a straight path ``x(a) = x0 + a * d`` its
output is ``layer(x0) + a * W*d`` and the input gradient is its transpose
applied to the output gradient: IG integrates at the layer's output and maps
the sum back once per scan instead of once per step. Zeroing a set of voxels
changes the layer's output only by ``W*`` of those voxels, near the set:
occlusion subtracts that from the scan's output instead of convolving every
occluded copy whole. :func:`split_on_cpu` is the ``prepare`` step both use.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

#: Largest allowed difference between the logits of the original and the folded model.
FOLD_ATOL = 1e-4


def traced_forward(model: nn.Module, example: torch.Tensor, handles: list) -> None:
    """Run ``model`` on ``example`` without gradients, then remove the hook ``handles``."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()


def feeding_convs(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Map each BatchNorm3d's name to the name of the Conv3d whose output it normalises."""
    outputs: dict[int, str] = {}
    pairs: dict[str, str] = {}
    names = {module: name for name, module in model.named_modules()}
    handles = []

    def conv_hook(module, inputs, output):
        outputs[id(output)] = names[module]

    def bn_hook(module, inputs):
        conv = outputs.get(id(inputs[0]))
        if conv is None:
            raise ValueError(f"BatchNorm3d {names[module]!r} does not directly follow a Conv3d; LRP cannot fold it")
        pairs[names[module]] = conv

    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.BatchNorm3d):
            handles.append(module.register_forward_pre_hook(bn_hook))
    traced_forward(model, example, handles)
    return pairs


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` at the dotted ``name``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm3d folded into its Conv3d.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    example : torch.Tensor
        One input batch, used to trace which convolution feeds which BatchNorm
        and to verify the folded copy.

    Raises
    ------
    ValueError
        When a BatchNorm3d does not directly follow a Conv3d, or the folded
        model's outputs differ from the original's by more than :data:`FOLD_ATOL`.
    """
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for bn_name, conv_name in feeding_convs(folded, example).items():
            bn = folded.get_submodule(bn_name)
            conv = folded.get_submodule(conv_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
            set_submodule(folded, bn_name, nn.Identity())
        difference = (folded(example) - model(example)).abs().max().item()
    if difference > FOLD_ATOL:
        raise ValueError(f"folding BatchNorm changed the model's outputs by {difference:.2e} (> {FOLD_ATOL})")
    return folded


class InputSplit(nn.Module):
    """A classifier written as ``rest(layer(x))``.

    Parameters
    ----------
    layer : nn.Conv3d
        The convolution (BatchNorm folded in) that alone reads the input.
    rest : nn.Module
        The model from that convolution's output to the logits.
    """

    def __init__(self, layer: nn.Conv3d, rest: nn.Module):
        super().__init__()
        self.layer = layer
        self.rest = rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of volumes ``x``."""
        return self.rest(self.layer(x))


def _input_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the first module called on the model's input tensor itself."""
    found: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs):
        if not found and inputs and inputs[0] is example:
            found.append(names[module])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if not list(m.children())]
    traced_forward(model, example, handles)
    if not found:
        raise ValueError("no layer reads the model's input directly")
    return found[0]


def split_input_layer(model: nn.Module, example: torch.Tensor) -> InputSplit:
    """``model`` (eval mode) as an input convolution and the rest (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    example : torch.Tensor
        One input batch, to find the input layer and verify the split.

    Raises
    ------
    ValueError
        When the first layer applied to the input is not a Conv3d, or the input
        reaches the output by another way too (the split's logits differ from
        the model's by more than :data:`FOLD_ATOL`).
    """
    folded = fold_batchnorm(model, example)
    name = _input_layer(folded, example)
    layer = folded.get_submodule(name)
    if not isinstance(layer, nn.Conv3d):
        raise ValueError(f"the model's input layer {name!r} is a {type(layer).__name__}, not a Conv3d")
    rest = copy.deepcopy(folded)
    set_submodule(rest, name, nn.Identity())
    with torch.no_grad():
        try:
            difference = (rest(layer(example)) - model(example)).abs().max().item()
        except RuntimeError as exc:  # the raw input is also used past the input layer (shapes differ)
            raise ValueError(f"the model's input is used beyond its input layer {name!r}") from exc
    if difference > FOLD_ATOL:
        raise ValueError(f"the model's input is used beyond its input layer {name!r} ({difference:.2e})")
    return InputSplit(layer, rest)


def split_on_cpu(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """:func:`split_input_layer` of ``model`` on the CPU; ``model`` itself elsewhere or where it cannot be split.

    On the CPU the input convolution (one input channel, the finest grid) is a
    large part of a pass; cuDNN's is cheap, so other devices run the whole
    model (``docs/performance.md``).
    """
    if example.device.type != "cpu":
        return model
    try:
        return split_input_layer(model, example.contiguous(memory_format=torch.channels_last_3d))
    except ValueError:
        return model
