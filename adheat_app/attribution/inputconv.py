"""A faster input gradient for the convolution that reads the scan (one channel in, many out) on the CPU.

Every gradient method ends by carrying the gradient of the first
convolution's output (``C`` channels on the finest grid) back to its
one-channel input: ``dx = sum_c flip(w_c) * dy_c``. torch computes that with
oneDNN's backward-data primitive, which handles a single output channel
poorly; here it is a depthwise convolution of ``dy`` with the flipped kernels
(``groups = C``, vectorised across the channels) followed by a sum over the
channels (several times faster on the CPU: ``docs/performance.md``).
:class:`SingleChannelConv3d` is a Conv3d whose
backward does that; :func:`with_fast_input_gradient` puts it in place of every
eligible Conv3d of a model (frozen weights, one input channel, stride and
dilation 1, zero padding), and :func:`conv3d` is the functional form LRP's
rules use. Elsewhere (CUDA, trainable weights, strided convolutions) torch's
own backward runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adheat_app.attribution.canonize import set_submodule


class _SingleChannelConvolution(torch.autograd.Function):
    """``conv3d(x, weight, bias, padding)`` whose backward gives the input gradient only."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.padding = padding
        return F.conv3d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        weight, = ctx.saved_tensors
        flipped = weight.flip(2, 3, 4)
        padding = tuple(k - 1 - p for k, p in zip(weight.shape[2:], ctx.padding))
        depthwise = F.conv3d(grad, flipped, padding=padding, groups=weight.shape[0])
        return depthwise.sum(1, keepdim=True), None, None, None


def eligible(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple | str, dilation: tuple,
             groups: int) -> bool:
    """Whether :func:`conv3d` may use the depthwise backward for these arguments."""
    return (x.device.type == "cpu" and x.dim() == 5 and x.shape[1] == 1 and weight.shape[1] == 1
            and groups == 1 and not weight.requires_grad and not isinstance(padding, str)
            and all(s == 1 for s in stride) and all(d == 1 for d in dilation)
            and all(0 <= p < k for p, k in zip(padding, weight.shape[2:])))


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: tuple = (1, 1, 1),
           padding: tuple | str = (0, 0, 0), dilation: tuple = (1, 1, 1), groups: int = 1) -> torch.Tensor:
    """:func:`torch.nn.functional.conv3d` (tuple arguments), with the fast input gradient where it is eligible."""
    if eligible(x, weight, stride, padding, dilation, groups):
        return _SingleChannelConvolution.apply(x, weight, bias, tuple(padding))
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


def is_local_single_channel(conv: nn.Conv3d) -> bool:
    """One input channel, stride and dilation 1, no groups, zero padding given in voxels.

    Each output voxel then depends only on the input voxels under its kernel:
    what :class:`SingleChannelConv3d` and occlusion's bounding-box update rely on.
    """
    return (conv.in_channels == 1 and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and all(s == 1 for s in conv.stride)
            and all(d == 1 for d in conv.dilation))


class SingleChannelConv3d(nn.Conv3d):
    """A zero-padded Conv3d that computes its input gradient by :func:`conv3d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x``."""
        return conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def with_fast_input_gradient(model: nn.Module) -> nn.Module:
    """``model`` with every one-channel-input, unstrided, zero-padded Conv3d made a :class:`SingleChannelConv3d`.

    The replacements share the original parameters; ``model`` is changed in
    place (pass a copy, e.g. the BatchNorm-folded one) and returned.
    """
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv3d and is_local_single_channel(module):
            fast = SingleChannelConv3d(1, module.out_channels, module.kernel_size, padding=module.padding,
                                       bias=module.bias is not None, device="meta")
            fast.weight, fast.bias = module.weight, module.bias
            set_submodule(model, name, fast.train(module.training))
    return model
