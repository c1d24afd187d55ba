"""Heatmap (attribution) methods, registered by their command-line name (``--methods``).

Each method module defines one :class:`~.base.Method` subclass and registers
it with ``@METHODS.register("Name")``; its declarations are checked then
(:func:`~.base.check_method`). Adding a method is adding a file: ``--methods``,
the defaults and README.md's table follow from the declarations (:mod:`.catalog`).
"""

from adheat_app.attribution.base import check_method
from adheat_app.registry import Registry

METHODS = Registry("adheat_app.attribution", "heatmap method", check=check_method)
