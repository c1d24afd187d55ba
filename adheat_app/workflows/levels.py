"""Both analysis levels in order, on one prepared output dataset (:func:`run_levels`)."""

from __future__ import annotations

import logging

from adheat_app.bids import Derivatives, collect_t1w, load_layout
from adheat_app.citation import write_citation
from adheat_app.config import RunConfig
from adheat_app.io import remove_stale_partials, write_text
from adheat_app.workflows import group, participant

LOGGER = logging.getLogger(__name__)


def run_levels(config: RunConfig, run_id: str) -> int:
    """Run every requested analysis level; return the number of failed items."""
    layout = load_layout(config.bids_dir, config.work_dir)
    inputs = collect_t1w(layout, config.execution.participant_label, config.execution.session_label)
    LOGGER.info("%d T1w image(s) from %d subject(s)", len(inputs), len({t.subject for t in inputs}))
    derivs = Derivatives(config.output_dir, config.bids_dir)
    derivs.initialize()
    folders = [config.output_dir] + ([] if config.output_dir in config.work_dir.parents else [config.work_dir])
    for folder in folders:
        removed = remove_stale_partials(folder)
        if removed:
            LOGGER.info("removed %d temporary file(s) a killed run left in %s", len(removed), folder)
    write_text(config.output_dir / "logs" / f"config-{run_id}.toml", config.to_toml())
    failures = 0
    for level in config.analysis_level:
        runner = participant.run if level == "participant" else group.run
        failures += runner(config, derivs, inputs)
    write_citation(config, derivs)
    return failures
