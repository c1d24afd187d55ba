"""Layer-wise relevance propagation (Bach et al. 2015), as Wang et al. 2023: alpha-beta, from the explained output.

Implementation choice. captum's :class:`~captum.attr.LRP` changes each layer's
weights once and back-propagates through them; that expresses the epsilon,
gamma and alpha1-beta0 rules, but not alpha-beta with beta > 0 (it needs the
positive and the negative contributions of a layer separately) and not the
z+ rule for signed inputs (the first layer sees z-scored intensities below 0).
So adheat propagates relevance itself, with the same structure: the model is
canonized once per fold model (BatchNorm folded into its Conv3d, :mod:`.canonize`;
residual additions split, below), and a forward
hook on every Conv3d/Linear (and average pool) replaces that layer's backward
pass by its LRP rule, so one batched forward/backward pass gives the input
relevance of a whole batch (on the CPU the rules' gradient through the
one-channel input convolution uses :mod:`.inputconv`). ReLU, Dropout (eval),
flatten and max-pooling pass
relevance unchanged through autograd (max-pool: winner takes all, as Wang et
al.). Residual sums (``a + b`` in a forward, as in ``resnet3d``) are found by
tracing the model with ``torch.fx`` and split in proportion to the addends
(``R_a = a / (a + b) R``, epsilon-stabilised), so relevance is not counted
twice. With ``lrp_rule = epsilon`` the result equals captum's LRP with
``EpsilonRule`` on the folded model (tested).

Where relevance starts (``--explain-output``, :mod:`.output`): ``logit`` (Wang
et al.): the target logit's neuron, with relevance ``z_t``. ``difference``
(default): the last Linear is replaced by its difference
(:func:`~.output.difference_head`), so the target neuron computes
``d = z_t - z_o`` and starts with relevance ``d``. ``probability``: the same
neuron, starting with relevance ``p_t = sigmoid(d)`` (the rules are linear in
the relevance, so this is the difference map scaled by ``p_t / d``).

Rules (``--lrp-rule``), for a layer ``z_j = sum_i x_i w_ij + b_j``:

- ``alphabeta`` (default, Wang et al.): ``R_i = sum_j (alpha * (x_i w_ij)^+ / z_j^+
  - beta * (x_i w_ij)^- / z_j^-) R_j`` with alpha = 1.5, beta = 0.5, biases
  ignored in ``z^+`` and ``z^-``.
- ``zplus``: the same with alpha = 1, beta = 0 (positive contributions only).
- ``epsilon``: ``R_i = sum_j x_i w_ij / (z_j + eps sign z_j) R_j``; biases
  absorb relevance, so relevance is conserved only for bias-free layers.

- ``epsilonplusflat``: a composite (Kohlbrenner et al. 2020; zennit's
  ``EpsilonPlusFlat``, Anders et al. 2021), one rule per layer type:

  * the first Conv3d/Linear the input passes through: the flat rule, ``R_i =
    sum_j R_j / (n_j + eps)`` over the ``n_j`` input voxels ``i`` that feed ``j``
    (weights set to 1, bias to 0, inputs to 1: relevance spread evenly over the
    receptive field; the scans' values never enter, so the map is the upper
    layers' relevance seen through that layer's footprint);
  * every other Conv3d: z+ (alpha = 1, beta = 0) *with* the positive bias in
    the denominator, ``R_i = sum_j ((x_i w_ij)^+ / (z_j^+ + b_j^+)) R_j``, as
    zennit's ``ZPlus`` (negative inputs count through negative weights);
  * Linear layers: epsilon (biases included in ``z``);
  * average pools and residual sums: epsilon with ``eps`` only as a
    stabiliser (zennit's ``Norm``); ReLU, Dropout, max-pooling and flatten
    pass relevance by the gradient; BatchNorm is folded (zennit's
    ``SequentialMergeBatchNorm``).

  It equals zennit's ``EpsilonPlusFlat`` (epsilon = stabiliser =
  ``--lrp-epsilon``) on every registered model (tested).

Average pools use the epsilon rule (positive weights: every rule agrees).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod
from adheat_app.attribution.canonize import fold_batchnorm
from adheat_app.attribution.inputconv import conv3d
from adheat_app.attribution.output import difference_head

ALPHA_BETA = {"alphabeta": (1.5, 0.5), "zplus": (1.0, 0.0)}
#: The ``--lrp-rule`` that picks a rule per layer (module docstring) instead of one rule for all.
COMPOSITE = "epsilonplusflat"
#: The composite's rule per layer, as recorded in the sidecars.
COMPOSITE_LAYERS = {"InputLayer": "flat", "Conv3d": "zplus (alpha 1, beta 0, positive bias)",
                    "Linear": "epsilon", "AvgPool": "epsilon (stabiliser only)", "ResidualSum": "proportional"}
#: Modules through which relevance flows by the plain gradient.
PASS_THROUGH = (nn.ReLU, nn.Dropout, nn.MaxPool3d, nn.Identity, nn.Sequential, nn.ModuleList)
POOLS = (nn.AvgPool3d, nn.AdaptiveAvgPool3d)


def _linear_map(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, w) -> x * w`` of a Conv3d or Linear, without bias."""
    if isinstance(module, nn.Conv3d):
        return lambda x, w: conv3d(x, w, None, module.stride, module.padding, module.dilation, module.groups)
    return lambda x, w: F.linear(x, w)


def _functional(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's forward without its hooks (the rule hook must not call itself)."""
    if isinstance(module, nn.AdaptiveAvgPool3d):
        return lambda x: F.adaptive_avg_pool3d(x, module.output_size)
    if isinstance(module, nn.AvgPool3d):
        return lambda x: F.avg_pool3d(x, module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                      module.count_include_pad, module.divisor_override)
    apply = _linear_map(module)
    if module.bias is None:
        return lambda x: apply(x, module.weight)
    shape = (1, -1) + (1,) * (3 if isinstance(module, nn.Conv3d) else 0)
    return lambda x: apply(x, module.weight) + module.bias.view(shape)


def _stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0)


def epsilon_rule(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, relevance: torch.Tensor,
                 epsilon: float) -> torch.Tensor:
    """Input relevance of a layer ``forward`` (bias included in ``z``) by the epsilon rule."""
    x = x.detach().requires_grad_(True)
    z = forward(x)
    scaled = (relevance / _stabilise(z.detach(), epsilon)).detach()
    grad, = torch.autograd.grad((z * scaled).sum(), x)
    return x.detach() * grad


def flat_rule(module: nn.Module, x: torch.Tensor, relevance: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Input relevance of a Conv3d/Linear by the flat rule: weights and inputs 1, no bias (module docstring)."""
    ones = torch.ones_like(module.weight)
    apply = _linear_map(module)
    return epsilon_rule(lambda v: apply(v, ones), torch.ones_like(x), relevance, epsilon)


def alpha_beta_rule(module: nn.Module, x: torch.Tensor, relevance: torch.Tensor, alpha: float, beta: float,
                    epsilon: float, bias: bool = False) -> torch.Tensor:
    """Input relevance of a Conv3d/Linear by the alpha-beta rule (``bias``: the bias's positive part joins
    ``z^+`` and its negative part ``z^-``, as in zennit's rules; else biases are ignored)."""
    apply = _linear_map(module)
    x_pos = x.detach().clamp(min=0).requires_grad_(True)
    x_neg = x.detach().clamp(max=0).requires_grad_(True)
    w_pos, w_neg = module.weight.detach().clamp(min=0), module.weight.detach().clamp(max=0)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = 0.0
    for weight, pair in ((alpha, (w_pos, w_neg)), (-beta, (w_neg, w_pos))):
        if weight == 0:
            continue
        z = apply(x_pos, pair[0]) + apply(x_neg, pair[1])
        if bias and module.bias is not None:
            z = z + module.bias.detach().clamp(**({"min": 0} if weight > 0 else {"max": 0})).view(shape)
        scaled = (relevance / (z.detach() + epsilon * (1 if weight > 0 else -1))).detach()
        g_pos, g_neg = torch.autograd.grad((z * scaled).sum(), (x_pos, x_neg))
        out = out + weight * (x_pos.detach() * g_pos + x_neg.detach() * g_neg)
    return out


class _RuleFunction(torch.autograd.Function):
    """Identity on the layer's output whose backward is the layer's LRP rule."""

    @staticmethod
    def forward(ctx, x, output, rule):
        ctx.save_for_backward(x)
        ctx.rule = rule
        return output.clone()

    @staticmethod
    def backward(ctx, relevance):
        x, = ctx.saved_tensors
        with torch.enable_grad():
            return ctx.rule(x, relevance), None, None


class _AddFunction(torch.autograd.Function):
    """``a + b`` whose backward splits relevance in proportion to the addends."""

    @staticmethod
    def forward(ctx, a, b, epsilon):
        ctx.save_for_backward(a, b)
        ctx.epsilon = epsilon
        return a + b

    @staticmethod
    def backward(ctx, relevance):
        a, b = ctx.saved_tensors
        scaled = relevance / _stabilise(a + b, ctx.epsilon)
        return a * scaled, b * scaled, None


def split_add(a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``a + b`` with the proportional relevance split of :class:`_AddFunction` (the fx replacement of ``+``)."""
    return _AddFunction.apply(a, b, epsilon)


def with_split_additions(model: nn.Module, epsilon: float) -> torch.fx.GraphModule:
    """``model`` traced with ``torch.fx``, every tensor addition replaced by :func:`split_add`.

    Raises
    ------
    ValueError
        When the model cannot be traced (data-dependent control flow in ``forward``).
    """
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises several error types for untraceable code
        raise ValueError(f"LRP needs a model torch.fx can trace: {exc}") from exc
    for node in traced.graph.nodes:
        if (node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2
                and all(isinstance(arg, torch.fx.Node) for arg in node.args)):
            node.target = split_add
            node.args = (*node.args, epsilon)
    traced.recompile()
    return traced


def lrp_rule(module: nn.Module, rule: str, epsilon: float, first: bool = False
             ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The relevance map ``(x, R_out) -> R_in`` of one layer (``first``: the layer that reads the input)."""
    if rule == COMPOSITE and not isinstance(module, POOLS):
        if first:
            return lambda x, r: flat_rule(module, x, r, epsilon)
        if isinstance(module, nn.Conv3d):
            return lambda x, r: alpha_beta_rule(module, x, r, 1.0, 0.0, epsilon, bias=True)
        return lambda x, r: epsilon_rule(_functional(module), x, r, epsilon)
    if isinstance(module, POOLS) or rule == "epsilon":
        return lambda x, r: epsilon_rule(_functional(module), x, r, epsilon)
    alpha, beta = ALPHA_BETA[rule]
    return lambda x, r: alpha_beta_rule(module, x, r, alpha, beta, epsilon)


def first_layer(model: nn.Module) -> nn.Module | None:
    """The first Conv3d or Linear a :class:`Canonized` model calls (its traced graph's order), else None."""
    if not isinstance(model, Canonized):
        return None
    for node in model.traced.graph.nodes:
        if node.op == "call_module":
            module = model.traced.get_submodule(node.target)
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                return module
    return None


def attach_rules(model: nn.Module, rule: str, epsilon: float) -> list:
    """Hook the LRP rule onto every Conv3d, Linear and average pool of a canonized model.

    Returns the hook handles (remove them when done).

    Raises
    ------
    ValueError
        For a module type LRP has no rule for (e.g. a BatchNorm that was not folded).
    """
    handles = []
    first = first_layer(model)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv3d, nn.Linear, *POOLS)):
            fn = lrp_rule(module, rule, epsilon, module is first)
            handles.append(module.register_forward_hook(
                lambda mod, inputs, output, fn=fn: _RuleFunction.apply(inputs[0], output.detach(), fn)))
        elif module is not model and not isinstance(module, PASS_THROUGH) and not list(module.children()):
            for handle in handles:
                handle.remove()
            raise ValueError(f"LRP has no rule for module {name!r} ({type(module).__name__})")
    return handles


class Canonized(nn.Module):
    """A model ready for :func:`lrp` (BatchNorm folded, residual additions split), made by :func:`canonize`.

    Parameters
    ----------
    traced : torch.fx.GraphModule
        The folded model, traced, with its additions replaced by :func:`split_add`.
    output : str
        The explained output it was made for (``difference`` and
        ``probability``: its last Linear is :func:`~.output.difference_head`'s).
    """

    def __init__(self, traced: torch.fx.GraphModule, output: str):
        super().__init__()
        self.traced = traced
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of volumes ``x``."""
        return self.traced(x)


def explained_head(folded: nn.Module, example: torch.Tensor, output: str) -> nn.Module:
    """The folded model as LRP starts from it: its last Linear differenced unless ``output`` is ``logit``."""
    return folded if output == "logit" else difference_head(folded, example)


def canonize(model: nn.Module, example: torch.Tensor, epsilon: float, output: str) -> Canonized:
    """``model`` with BatchNorm folded, the explained head and residual additions split, built once per model."""
    folded = explained_head(fold_batchnorm(model, example), example, output)
    return Canonized(with_split_additions(folded, epsilon), output)


def lrp(model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, rule: str, epsilon: float,
        output: str = "logit") -> torch.Tensor:
    """Input relevance of ``rows`` (``(B, 1, X, Y, Z)``) from their explained outputs (see the module docstring).

    ``model`` is :class:`Canonized` for ``output``, or has its BatchNorms
    folded (:func:`~adheat_app.attribution.canonize.fold_batchnorm`) and gets
    its explained head and split residual additions here.
    """
    if not isinstance(model, Canonized):
        model = Canonized(with_split_additions(explained_head(model, rows[:1], output), epsilon), output)
    if model.output != output:
        raise ValueError(f"the model was canonized for --explain-output {model.output}, not {output}")
    handles = attach_rules(model, rule, epsilon)
    try:
        rows = rows.detach().requires_grad_(True)
        start = model(rows).gather(1, targets[:, None])
        initial = torch.exp(F.logsigmoid(start.detach())) if output == "probability" else start.detach()
        relevance, = torch.autograd.grad(start, rows, grad_outputs=initial)
    finally:
        for handle in handles:
            handle.remove()
    return relevance


@METHODS.register("LRP")
class LRP(GradientMethod):
    """LRP of the explained output on the BatchNorm-folded model (signed)."""

    name = "LRP"
    signed = True
    uses = ("lrp_rule", "lrp_epsilon")
    order = 2
    sets = ("wang2023",)
    source = "Wang 2023"
    summary = ("layer-wise relevance propagation from the explained output; BatchNorm folded into the preceding conv "
               "first; `--lrp-rule alphabeta` (α=1.5, β=0.5, as Wang et al.), `epsilon`, `zplus` or the composite "
               "`epsilonplusflat` (flat at the input layer, z+ on convolutions, ε on dense layers); signed")
    default_note = ("the composite ranks second on the development seeds, but fails the intensity development cohort "
                    "(below)")

    def parameters(self) -> dict:
        """Rule, its alpha/beta, epsilon and output explained."""
        params = {"Rule": self.options.lrp_rule, "Epsilon": self.options.lrp_epsilon, "Output": self.output,
                  "Canonization": "BatchNorm folded into Conv3d", "MaxPool": "winner-take-all"}
        if self.options.lrp_rule in ALPHA_BETA:
            params["Alpha"], params["Beta"] = ALPHA_BETA[self.options.lrp_rule]
        if self.options.lrp_rule == COMPOSITE:
            params["LayerRules"] = COMPOSITE_LAYERS
        return params

    def prepare(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The canonized model (:func:`canonize`), made once per fold model."""
        return canonize(model, example, self.options.lrp_epsilon, self.output)

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """LRP of one padded pass (``model`` canonized here unless :meth:`prepare` made it)."""
        if not isinstance(model, Canonized):
            model = canonize(model, rows[:1], self.options.lrp_epsilon, self.output)
        return lrp(model, rows, targets, self.options.lrp_rule, self.options.lrp_epsilon, self.output)
