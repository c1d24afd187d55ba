"""README's table of the registration backends, made from their declarations."""

from __future__ import annotations

from adheat_app.preprocess.backends import BACKENDS


def backends_markdown() -> str:
    """One row per registered backend: its ``--registration`` name, summary, log Jacobian and transform files."""
    rows = ["| `--registration` | backend | log Jacobian | transform files |", "|---|---|---|---|"]
    for name in sorted(BACKENDS):
        backend = BACKENDS[name]
        rows.append(f"| `{name}` | {backend.summary} | {'yes' if backend.deformable else 'no'} | "
                    f"`*_xfm{backend.transform_extension}`: {backend.transform_type} |")
    return "\n".join(rows)
