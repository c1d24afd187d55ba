"""CNN architectures, registered by name (``--model NAME``).

Each submodule defines one architecture and registers a builder with
``@MODELS.register("name")``; a builder takes the input grid shape
``(X, Y, Z)`` and the number of input channels ``C`` (``--input``: 1 or 2)
and returns an ``nn.Module`` mapping ``(N, C, X, Y, Z)`` volumes to ``(N, 2)``
logits (index 1 = positive class). Adding a model is adding a file.
Every model is checked against the contract the heatmap methods rely on when
it registers (:func:`~adheat_app.models._contract.check_model`).
"""

from adheat_app.models._contract import check_model
from adheat_app.registry import Registry

MODELS = Registry("adheat_app.models", "model", check=check_model)
