"""The classifier output a heatmap explains (``--explain-output``), computed without float32 saturation.

The models give two logits ``(z_0, z_1)``. A softmax is unchanged when the
same constant is added to both, so one logit alone has an arbitrary offset:
it can be negative for a confidently correct prediction, which flips the sign
of every signed map of it. Three outputs can be explained for a target class
``t`` (``o`` is the other class):

- ``difference`` (default): the logit difference ``d = z_t - z_o``, the
  log-odds of ``t``: free of the offset, and it never saturates.
- ``logit``: ``z_t``, as Wang et al. (2023) (for reproducing them).
- ``probability``: ``p_t = sigmoid(d)``, as Rieke et al. (2018). In float32 a
  softmax rounds ``p_t`` to exactly 1 once ``d`` passes about 17: the
  gradient of the softmax then loses the target term and an occlusion drop
  ``p_t(x) - p_t(x')`` becomes exactly 0, so a confident model gets all-zero
  maps. Here ``p_t`` is ``exp(log sigmoid(d))``, whose gradient
  ``sigmoid(-d) * grad d`` is exact in float32 up to ``d`` of about 87, and
  a drop is :func:`probability_drop`. The maps are still scaled by
  ``p_t (1 - p_t)``: tiny (though not zero) for a confident subject.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

#: Choices of ``--explain-output``.
EXPLAIN_OUTPUTS = ("difference", "logit", "probability")


def other_logit(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``z_o``, the logit of the class that is not the target (two-class models)."""
    if logits.shape[1] != 2:
        raise ValueError(f"heatmaps explain two-class models; this one has {logits.shape[1]} outputs")
    return logits.gather(1, (1 - targets)[:, None])[:, 0]


def explained(logits: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """The explained output ``(N,)`` of each row for its target class (differentiable, see the module docstring)."""
    target = logits.gather(1, targets[:, None])[:, 0]
    if output == "logit":
        return target
    difference = target - other_logit(logits, targets)
    if output == "difference":
        return difference
    if output == "probability":
        return torch.exp(F.logsigmoid(difference))
    raise ValueError(f"--explain-output {output!r}: choose one of {', '.join(EXPLAIN_OUTPUTS)}")


def probability_drop(clean: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """``sigmoid(clean) - sigmoid(changed)`` of two logit differences, accurate when both are near 1.

    Written as ``sigmoid(a) sigmoid(-b) - sigmoid(-a) sigmoid(b)``: both
    products are accurate in float32, so the drop from ``d = 40`` to
    ``d = 38`` is 3.1e-17 - 4.2e-18, where ``sigmoid(40) - sigmoid(38)`` is 0.
    """
    return torch.sigmoid(clean) * torch.sigmoid(-changed) - torch.sigmoid(-clean) * torch.sigmoid(changed)


def output_drop(clean: torch.Tensor, changed: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """Drop of the explained output from logits ``clean`` to logits ``changed`` (both ``(N, 2)``), per row."""
    if output == "probability":
        return probability_drop(explained(clean, targets, "difference"), explained(changed, targets, "difference"))
    return explained(clean, targets, output) - explained(changed, targets, output)


class OutputModel(nn.Module):
    """``model`` with outputs ``(N, 2)`` whose column ``t`` is the explained output for target ``t``.

    For captum's attribution classes, which select the output column by
    ``target``: ``difference`` gives ``logits - logits.flip(1)``, ``logit``
    the logits, ``probability`` the stable ``p_t`` of both classes.
    """

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        if output not in EXPLAIN_OUTPUTS:
            raise ValueError(f"--explain-output {output!r}: choose one of {', '.join(EXPLAIN_OUTPUTS)}")
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Explained output for either target class, ``(N, 2)``."""
        logits = self.model(x)
        if self.output == "logit":
            return logits
        difference = logits - logits.flip(1)
        return difference if self.output == "difference" else torch.exp(F.logsigmoid(difference))


def difference_head(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose output ``t`` is ``z_t - z_o``: the last Linear's rows (and biases) differenced.

    LRP propagates relevance from one output neuron through the layers' rules;
    a difference computed after the last Linear would reach it as two
    relevances of opposite sign, which the alpha-beta rule does not treat as
    one neuron. With ``W'_t = W_t - W_o`` and ``b'_t = b_t - b_o`` the last
    layer computes ``d`` itself (the usual way of explaining a class contrast).

    Raises
    ------
    ValueError
        When the model's output is not the output of a two-unit ``nn.Linear``.
    """
    differenced = copy.deepcopy(model)
    found: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module, inputs, output):
        found.append((module, output))

    handles = [m.register_forward_hook(hook) for m in differenced.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            logits = differenced(example)
    finally:
        for handle in handles:
            handle.remove()
    last = [module for module, output in found if output is logits]
    if not last or last[0].out_features != 2:
        raise ValueError("explaining the logit difference by LRP needs a model whose output is a two-unit "
                         "nn.Linear; use --explain-output logit")
    layer = last[0]
    with torch.no_grad():
        layer.weight.copy_(layer.weight - layer.weight.flip(0))
        if layer.bias is not None:
            layer.bias.copy_(layer.bias - layer.bias.flip(0))
    return differenced
