"""Heatmap (attribution) methods, registered by their command-line name (``--methods``).

Each submodule defines one method class and registers it with
``@METHODS.register("Name")``. Adding a method is adding a file.
"""

from adheat_app.registry import Registry

METHODS = Registry("adheat_app.attribution", "heatmap method")
