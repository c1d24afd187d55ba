"""The BIDS-App argument parser, generated from the option declarations in :mod:`adheat_app.config`.

Every option is accepted in kebab and snake spelling (``--participant-label``
and ``--participant_label``). Options are declared once, as dataclass fields,
so this module only translates declarations into argparse arguments: one
argument group per configuration section.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from adheat_app import __version__
from adheat_app.config import SECTIONS, RunConfig, option_choices

DESCRIPTION = (
    "adheat: where does a 3D CNN look when it separates Alzheimer's disease from controls on T1w MRI, "
    "and is that where the disease is? 'participant' preprocesses each T1w into template space (and derives "
    "heatmaps when trained models exist); 'group' trains the CNN with subject-level cross-validation, fits the "
    "linear-SVM baseline, averages heatmaps and scores them against a meta-analysis map."
)

SECTION_TITLES = {
    "execution": "Data selection and resources",
    "preprocessing": "Preprocessing (participant level)",
    "training": "Labels, CNN and cross-validation (group level)",
    "heatmaps": "Heatmaps",
    "evaluation": "Group maps and scores (group level)",
}

EPILOG = "Exit codes: 0 success, 1 run failure, 2 usage or input error. Documentation: README.md."


def _scalar_type(fld: dataclasses.Field) -> Any:
    meta_type = fld.metadata.get("type")
    if meta_type is not None:
        return meta_type
    if isinstance(fld.default, (bool, int, float, str)):
        return type(fld.default)
    return str


def _add_field(group: argparse._ArgumentGroup, section: str, fld: dataclasses.Field) -> None:
    meta = fld.metadata
    kebab = "--" + fld.name.replace("_", "-")
    flags = [f for f in (meta.get("short"), kebab) if f]
    if "_" in fld.name:
        flags.append("--" + fld.name)
    common: dict[str, Any] = {"dest": f"{section}.{fld.name}", "default": argparse.SUPPRESS,
                              "help": meta["help"]}
    default = fld.default
    choices = option_choices(fld)
    metavar = meta.get("metavar") or (None if choices else fld.name.upper())
    if fld.name == "verbose":
        group.add_argument(*flags, action="count", **common)
    elif isinstance(default, bool):
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
    elif isinstance(default, tuple):
        group.add_argument(*flags, nargs="+", type=_scalar_type(fld), metavar=metavar, choices=choices, **common)
    else:
        group.add_argument(*flags, type=_scalar_type(fld), metavar=metavar, choices=choices, **common)


def derived_defaults() -> dict[tuple[str, str], tuple]:
    """Defaults that follow from declarations elsewhere, by (section, field): ``--methods``' default is the methods
    that declare ``default = True`` (read here, above the config, so the config does not import the methods)."""
    from adheat_app.attribution.catalog import default_methods

    return {("heatmaps", "methods"): default_methods()}


def resolve_defaults(config: RunConfig) -> RunConfig:
    """``config`` with each option left at a :func:`derived_defaults` token replaced by the values it stands for
    (so the saved config records them)."""
    for (section, name), values in derived_defaults().items():
        options = getattr(config, section)
        field_default = next(f.default for f in dataclasses.fields(options) if f.name == name)
        if getattr(options, name) == field_default:
            config = config.replace(section, **{name: values})
    return config


def _default_text(fld: dataclasses.Field, section: str = "") -> str:
    default = derived_defaults().get((section, fld.name), fld.default)
    if default is None or default == () or fld.name == "verbose" or isinstance(default, bool) and not default:
        return ""
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return str(default)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Show defaults (declared in the config) after each option's help."""

    defaults: dict[str, str] = {}

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = self.defaults.get(action.dest, "")
        if default and "%(default)" not in text and "default" not in text.lower():
            text += f" [default: {default}]"
        return text.replace("%(default)s", default)


def build_parser() -> argparse.ArgumentParser:
    """The ``adheat`` argument parser."""
    defaults: dict[str, str] = {}
    parser = argparse.ArgumentParser(prog="adheat", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("bids_dir", type=Path, help="Root folder of the input BIDS dataset (read only).")
    parser.add_argument("output_dir", type=Path, help="Folder of the output BIDS-Derivatives dataset.")
    parser.add_argument("analysis_level", nargs="+", choices=["participant", "group"],
                        help="'participant', 'group', or both in order ('participant group').")
    parser.add_argument("--version", action="version", version=f"adheat {__version__}")
    parser.add_argument("--config-file", "--config_file", type=Path, metavar="FILE", default=None,
                        help="TOML or JSON file of options (sections as in logs/config-*.toml); "
                             "command-line flags override it.")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(SECTION_TITLES[section])
        for fld in dataclasses.fields(cls):
            _add_field(group, section, fld)
            defaults[f"{section}.{fld.name}"] = _default_text(fld, section)
    _HelpFormatter.defaults = defaults
    return parser


def split_sections(namespace: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Group the options given on the command line by configuration section."""
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for dest, value in vars(namespace).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            out[section][name] = tuple(value) if isinstance(value, list) else value
    return out


def options_markdown() -> str:
    """Every option as a Markdown table (one table per section), as README.md shows it.

    ``tests/test_readme.py`` checks that README.md holds exactly this text, so
    the documentation cannot drift from the parser.
    """
    blocks = []
    for section, cls in SECTIONS.items():
        rows = [f"**{SECTION_TITLES[section]}**", "", "| option | default | meaning |", "|---|---|---|"]
        for fld in dataclasses.fields(cls):
            flag = "--" + fld.name.replace("_", "-")
            choices = option_choices(fld)
            if choices:
                flag += " {" + ",".join(map(str, choices)) + "}"
            default = _default_text(fld, section) or "–"
            text = fld.metadata["help"].replace("%(default)s", default).replace("|", "\\|")
            rows.append(f"| `{flag}` | {default} | {text} |")
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks)
