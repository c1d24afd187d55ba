"""The registered reference kinds read as one: every map of a run, each subject's own maps, the headline order, the
methods text."""

from __future__ import annotations

from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind


def _by_order() -> list[ReferenceKind]:
    return sorted(REFERENCES.values(), key=lambda kind: (kind.order, kind.name))


def _by_headline() -> list[ReferenceKind]:
    return sorted(REFERENCES.values(), key=lambda kind: (kind.headline is None, kind.headline or 0, kind.name))


def all_references(context: Context) -> list[Reference]:
    """Every reference map of this run, kind by kind in table order (:attr:`ReferenceKind.order`)."""
    return [ref for kind in _by_order() for ref in kind.load(context)]


def subject_references(context: Context) -> dict[str, dict[str, Reference]]:
    """Each subject's own reference maps of this run: reference name -> subject label -> map (kinds in table order;
    only kinds that have per-subject maps, :meth:`ReferenceKind.load_subjects`)."""
    out: dict[str, dict[str, Reference]] = {}
    for kind in _by_order():
        for subject, ref in kind.load_subjects(context).items():
            out.setdefault(ref.name, {})[subject] = ref
    return out


def headline_order() -> tuple[str, ...]:
    """Reference names in the order the answer puts first (kinds never the headline last)."""
    return tuple(name for kind in _by_headline() for name in kind.names)


def kind_of(reference: str) -> ReferenceKind | None:
    """The kind whose maps carry the table name ``reference`` (None: unknown, e.g. an older run's)."""
    return next((kind for kind in REFERENCES.values() if reference in kind.names), None)


def methods_text(config: RunConfig) -> str:
    """The methods text's sentences on the reference maps, kind by kind in table order, those never the headline
    last."""
    return "".join(kind.methods_text(config) for kind in sorted(_by_order(), key=lambda kind: kind.headline is None))
