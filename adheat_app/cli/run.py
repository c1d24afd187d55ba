"""``adheat`` entry point: validate the inputs, set up logging, dispatch, map errors to exit codes.

Order matters: every check that can reject the input (paths, labels, option
values, the BIDS validator, the presence of T1w images) runs before anything is
written, so a rejected run leaves no trace. Only then are the output dataset,
its ``logs/`` folder and the run configuration created and the requested
analysis levels run.
"""

from __future__ import annotations

import logging
import sys
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from adheat_app import __version__
from adheat_app.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, InputError
from adheat_app.io import is_storage_error, write_text

LOGGER = logging.getLogger("adheat_app")


def _precheck_inputs(config) -> None:
    """Cheap filesystem checks of the selected subjects, before pybids writes its index."""
    from adheat_app.bids import normalize_label

    for label in config.execution.participant_label:
        sub = normalize_label(label, "sub")
        folder = config.bids_dir / f"sub-{sub}"
        if not folder.is_dir():
            raise InputError(f"participant label sub-{sub} not found: {folder} does not exist")
        if not any(folder.glob("**/anat/*_T1w.nii*")):
            raise InputError(f"sub-{sub} has no T1w image under {folder}; add anat/sub-{sub}_T1w.nii.gz or "
                             "drop it from --participant-label")
    for label in config.execution.session_label:
        normalize_label(label, "ses")


class _LogFile(logging.FileHandler):
    """The run's log file; when it cannot be written (full disk) it stops, and the console keeps every record."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.setLevel(logging.CRITICAL + 1)


def setup_logging(logs_dir: Path | None, verbose: int, run_id: str) -> Path | None:
    """Log to stderr (INFO, or DEBUG with -v) and, once outputs exist, to ``logs/adheat-<run>.log``."""
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_adheat_console", None) == run_id for h in LOGGER.handlers):
        console = logging.StreamHandler(sys.stderr)
        console._adheat_console = console._adheat_run = run_id
        console.setFormatter(fmt)
        LOGGER.addHandler(console)
    for handler in LOGGER.handlers:
        if getattr(handler, "_adheat_console", None) == run_id:
            handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    if logs_dir is None:
        return None
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_file = logs_dir / f"adheat-{run_id}.log"
    file_handler = _LogFile(log_file)
    file_handler.setLevel(logging.DEBUG)
    file_handler._adheat_run = run_id
    file_handler.setFormatter(fmt)
    LOGGER.addHandler(file_handler)
    return log_file


def _close_run_logs(run_id: str) -> None:
    """Close and remove the handlers of one run (its console handler too: it holds that call's ``sys.stderr``)."""
    for handler in list(LOGGER.handlers):
        if getattr(handler, "_adheat_run", None) == run_id:
            handler.close()
            LOGGER.removeHandler(handler)


def prepare(argv: list[str] | None):
    """Parse and validate; return the run configuration and its T1w inputs. Writes nothing."""
    from adheat_app.bids import check_dataset_paths, run_bids_validator
    from adheat_app.cli.parser import build_parser, resolve_defaults, split_sections
    from adheat_app.config import build_config, load_config_file
    from adheat_app.validate import check_options

    args = build_parser().parse_args(argv)
    file_values = load_config_file(args.config_file) if args.config_file else {}
    config = resolve_defaults(build_config(args.bids_dir, args.output_dir, tuple(args.analysis_level), file_values,
                                           split_sections(args)))
    if sorted(set(config.analysis_level), key=["participant", "group"].index) != list(config.analysis_level):
        raise InputError("analysis levels must be 'participant', 'group' or 'participant group'")
    check_dataset_paths(config.bids_dir, config.output_dir)
    _precheck_inputs(config)
    check_options(config)
    if not config.execution.skip_bids_validation:
        run_bids_validator(config.bids_dir)
    return config


def main(argv: list[str] | None = None) -> int:
    """Run ``adheat`` and return its exit code (0 ok, 1 run failure, 2 usage/input error)."""
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "_" + uuid.uuid4().hex[:8]
    try:
        return _run(argv, run_id)
    finally:
        _close_run_logs(run_id)


def _run(argv: list[str] | None, run_id: str) -> int:
    """:func:`main` with its log handlers set up (and removed by the caller)."""
    setup_logging(None, 0, run_id)
    try:
        config = prepare(argv)
    except InputError as exc:
        print(f"adheat: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging(config.output_dir / "logs", config.execution.verbose, run_id)
        from adheat_app.workflows import run_levels

        LOGGER.info("adheat %s, run %s: %s -> %s (%s)", __version__, run_id, config.bids_dir, config.output_dir,
                    " ".join(config.analysis_level))
        failures = run_levels(config, run_id)
    except InputError as exc:
        LOGGER.error("%s", str(exc).splitlines()[0])
        print(f"adheat: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        LOGGER.error("interrupted; rerun the same command to resume")
        return EXIT_FAILURE
    except Exception as exc:  # any other error is a run failure: keep the traceback
        if is_storage_error(exc):
            where = exc.filename or config.output_dir
            print(f"adheat: error: {where}: {exc.strerror}; free space there or make it writable, then rerun the "
                  "same command (finished outputs are kept)", file=sys.stderr)
            return EXIT_FAILURE
        message = str(exc).splitlines()[0] if str(exc) else ""
        crash = config.output_dir / "logs" / f"crash-{run_id}.txt"
        try:
            write_text(crash, traceback.format_exc())
        except OSError as write_error:
            LOGGER.error("run failed: %s: %s (no traceback file: %s)", type(exc).__name__, message,
                         write_error.strerror)
        else:
            LOGGER.error("run failed: %s: %s (traceback in %s)", type(exc).__name__, message, crash)
        return EXIT_FAILURE
    if failures:
        print(f"adheat: {failures} item(s) failed; see {config.output_dir / 'logs'}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
