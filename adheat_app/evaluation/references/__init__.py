"""Reference kinds, registered by name; every reference map of a run comes from them.

Each submodule defines one :class:`~._contract.ReferenceKind` and registers an
instance with ``REFERENCES.register("name")(instance)``; the contract is checked
then (:func:`~._contract.check_kind`). The evaluation, the report (the
reference section, the answer's headline order and caveats) and the methods
text read the kinds through :mod:`._catalog` (``all_references``,
``headline_order``, ``kind_of``, ``methods_text``), so adding a kind is adding
a file (``docs/architecture.md``, "Adding a reference kind").
"""

from __future__ import annotations

from adheat_app.evaluation.references._contract import Context, ReferenceKind, check_kind
from adheat_app.registry import Registry

REFERENCES: Registry[ReferenceKind] = Registry("adheat_app.evaluation.references", "reference kind",
                                               check=check_kind)


__all__ = ["REFERENCES", "Context", "ReferenceKind"]
