"""What every reference kind declares and how it is loaded: :class:`ReferenceKind`, :class:`Context`, the check.

A reference kind is one source of reference maps (the simulated truth, the
cohort's own test, an ALE of foci, a user's map, the region prior). It declares
the names its maps carry in the tables, its position in the tables
(``order``) and as the answer's headline (``headline``; None: never the
headline), a caveat the answer prints beside its name, the sentences of the
methods text, and one loader, ``load(context)``, returning its maps on the
analysis grid (none when it does not apply to this run). A kind that knows each
subject's own truth (the simulator's) also returns it from
``load_subjects(context)``, which the subject-level scores read
(:mod:`adheat_app.evaluation.subject_scores`); other kinds have none.
"""

from __future__ import annotations

from dataclasses import dataclass

from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference
from adheat_app.templates import Template


@dataclass(frozen=True)
class Context:
    """What a reference kind may read to load or compute its maps.

    Attributes
    ----------
    config : RunConfig
        Run configuration (``--reference-map``, ``--reference-threshold``, ``--n-permutations``, seed, overwrite).
    derivs : Derivatives
        Output dataset (where computed references are written and reused).
    cohort : Cohort
        The preprocessed cohort.
    template : Template
        Analysis template (grid and brain mask).
    compute : bool
        False: only read what exists (the report); a kind whose outputs are missing returns no map.
    """

    config: RunConfig
    derivs: Derivatives
    cohort: Cohort
    template: Template
    compute: bool = True


class ReferenceKind:
    """One source of reference maps; subclass it and register an instance (``docs/architecture.md``).

    Attributes
    ----------
    name : str
        Registry key (the kind).
    names : tuple of str
        Names its maps carry in the tables (the ``reference`` column), in headline order.
    order : int
        Position of its maps in the tables and sidecars (lower first).
    headline : int or None
        Rank as the answer's headline reference (lower first); None: never the headline.
    caveat : str
        Printed beside its name in the answer (empty: nothing).
    """

    name: str = ""
    names: tuple[str, ...] = ()
    order: int = 0
    headline: int | None = None
    caveat: str = ""

    def load(self, context: Context) -> list[Reference]:
        """Its maps on the analysis grid for this run (empty when it does not apply)."""
        raise NotImplementedError

    def methods_text(self, config: RunConfig) -> str:
        """Its sentences of the methods text for this run (empty when it does not apply), ending in a space."""
        raise NotImplementedError

    def load_subjects(self, context: Context) -> dict[str, Reference]:
        """Each subject's own reference map on the analysis grid, by subject label (empty: the kind has none,
        as a map of a group of subjects has no per-subject version)."""
        return {}


REQUIRED_METHODS = ("load", "methods_text")


def check_kind(name: str, kind: ReferenceKind) -> None:
    """Raise ``TypeError`` naming every broken rule when ``kind`` does not honour the contract."""
    if not isinstance(kind, ReferenceKind):
        raise TypeError(f"reference kind {name!r} must be a ReferenceKind instance, got {type(kind).__name__}")
    problems = []
    if kind.name != name:
        problems.append(f"its name is {kind.name!r}, not the registered {name!r}")
    if not kind.names or not all(isinstance(n, str) and n.isalnum() for n in kind.names):
        problems.append(f"names {kind.names!r} must be one or more alphanumeric table names")
    if not isinstance(kind.order, int):
        problems.append(f"order {kind.order!r} must be an int")
    if kind.headline is not None and not isinstance(kind.headline, int):
        problems.append(f"headline {kind.headline!r} must be an int or None")
    problems += [f"{method}() is not implemented" for method in REQUIRED_METHODS
                 if getattr(type(kind), method) is getattr(ReferenceKind, method)]
    if problems:
        raise TypeError(f"reference kind {name!r} breaks the contract: {'; '.join(problems)}")
