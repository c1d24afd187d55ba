"""What ``--methods`` can select, read from the methods' own declarations (:class:`~.base.Method`).

Nothing here lists methods: the order of ``--methods all`` and of the
reports, the default methods, the study sets (``wang2023``, ``rieke2018``) and
README.md's methods table all follow from the class attributes each method
file declares (``order``, ``default``, ``sets``, ``slow``, ``source``,
``summary``).
"""

from __future__ import annotations

from adheat_app.attribution import METHODS
from adheat_app.config import DEFAULT_METHODS
from adheat_app.errors import InputError


def method_names() -> list[str]:
    """Every registered method, in its declared order (``--methods all``)."""
    return sorted(METHODS, key=lambda name: (METHODS[name].order, name))


def default_methods() -> tuple[str, ...]:
    """The methods that declare themselves defaults, in order (the default ``--methods``)."""
    return tuple(name for name in method_names() if METHODS[name].default)


def method_sets() -> dict[str, tuple[str, ...]]:
    """Study sets selectable by name in ``--methods``: every set a method declares, with its methods in order."""
    sets: dict[str, tuple[str, ...]] = {}
    for name in method_names():
        for study in METHODS[name].sets:
            sets[study] = (*sets.get(study, ()), name)
    return dict(sorted(sets.items(), key=lambda item: method_names().index(item[1][0])))


def selected_methods(names: tuple[str, ...]) -> list[str]:
    """The method names of ``--methods`` (``all``, ``default`` and the :func:`method_sets` expand), in declared order.

    Raises
    ------
    InputError
        For a name that is neither a registered method nor a set.
    """
    available = method_names()
    if "all" in names:
        return available
    sets = {**method_sets(), DEFAULT_METHODS: default_methods()}
    expanded = {m for n in names for m in sets.get(n, (n,))}
    unknown = [n for n in names if n not in METHODS and n not in sets]
    if unknown:
        raise InputError(f"--methods {' '.join(unknown)}: unknown method(s); available: "
                         f"{', '.join(available)}, a study's set ({', '.join(sets)}) or 'all'")
    return [n for n in available if n in expanded]


def methods_markdown() -> str:
    """README.md's table of heatmap methods (name, source, what it computes, default), from the declarations."""
    lines = ["| name | source | what it computes | default |", "|---|---|---|---|"]
    for name in method_names():
        cls = METHODS[name]
        default = "yes" if cls.default else "slow, opt-in" if cls.slow else f"no: {cls.default_note}"
        lines.append(f"| `{name}` | {cls.source} | {cls.summary} | {default} |")
    return "\n".join(lines) + "\n"
