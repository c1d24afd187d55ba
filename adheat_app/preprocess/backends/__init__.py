"""Registration backends, registered by their ``--registration`` name.

Each submodule defines one backend (a :class:`~._contract.Backend`) and
registers an instance with ``BACKENDS.register("name")(instance)``; the
contract is checked then (:func:`~._contract.check_backend`). ``--registration``
choices, its validation, the sidecars, the log Jacobian and the methods text
follow from the registered backends, so adding a backend is adding a file
(``docs/architecture.md``, "Adding a registration backend").
"""

from __future__ import annotations

from adheat_app.preprocess.backends._contract import Backend, Registration, check_backend
from adheat_app.registry import Registry

BACKENDS: Registry[Backend] = Registry("adheat_app.preprocess.backends", "registration backend", check=check_backend)


__all__ = ["BACKENDS", "Backend", "Registration"]
