"""The BIDS-App command line: options, exit codes and one-line errors that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adheat_app import __version__, bids
from adheat_app.bids import T1wInput
from adheat_app.errors import InputError
from adheat_app.cli.parser import build_parser
from adheat_app.cli.run import main, prepare
from conftest import tree_digest, write_tiny_bids

ISSUE_OPTIONS = ["--participant-label", "--session-label", "--skip-bids-validation", "--work-dir", "-w",
                 "--nprocs", "--omp-nthreads", "--mem-gb", "--seed", "--device", "--overwrite", "--config-file",
                 "--verbose", "-v", "--version", "--resolution", "--registration", "--anat-derivatives",
                 "--label-column", "--positive-label", "--negative-label", "--model", "--folds", "--fold",
                 "--epochs", "--batch-size", "--learning-rate", "--patience", "--methods", "--models",
                 "--ig-steps", "--ig-baseline", "--lrp-rule", "--occlusion-size", "--occlusion-stride",
                 "--noise-lambda", "--native-space", "--sanity-check", "--reference-map",
                 "--reference-threshold", "--n-bootstrap"]


def _models(bids_dir: Path, name: str, fold: str | None = None) -> Path:
    """A ``--models`` folder beside the dataset (``tmp_path/models``), empty or with one trained fold at ``fold``."""
    root = bids_dir.parent / "models"
    root.mkdir(exist_ok=True)
    if fold:
        (root / fold).mkdir(parents=True)
        for file in ("model.pt", "model.json"):
            (root / fold / file).write_text("{}")
    return root


def test_every_range_rule_names_a_numeric_option():
    import dataclasses

    from adheat_app.config import SECTIONS
    from adheat_app.validate import RULES

    for section, rules in RULES.items():
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        for name in rules:
            assert name in fields, f"{section}.{name}"
            default = fields[name].default
            assert default is None or isinstance(default, (int, float)) and not isinstance(default, bool)
            assert default is None or rules[name].admits(default), f"the default of {name} is refused"


def test_models_folder_is_not_checked_for_a_group_run(tiny_bids, tmp_path):
    """The group level trains into --models, so an empty folder is fine there."""
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "group", "--models",
                      str(_models(tiny_bids, "empty")), "--skip-bids-validation"])
    assert config.models_dir == tmp_path / "models"


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_help_lists_every_option():
    text = build_parser().format_help()
    missing = [opt for opt in ISSUE_OPTIONS if opt not in text]
    assert not missing
    assert "default 2 mm" in text.replace("The default 2 mm", "default 2 mm")
    assert "Exit codes: 0 success, 1 run failure, 2 usage or input error" in text


def test_version_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "adheat_app", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"adheat {__version__}"


def test_kebab_and_snake_spellings_and_prefix_stripping(tiny_bids, tmp_path):
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "--participant_label", "sub-01",
                      "--participant-label", "02", "--skip-bids-validation", "--omp_nthreads", "3"])
    assert config.execution.participant_label == ("02",)  # the last occurrence wins, as in argparse
    assert config.execution.omp_nthreads == 3
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "--participant-label", "sub-01",
                      "02", "--skip-bids-validation", "--no-amp", "--methods", "IG", "LRP"])
    assert config.execution.participant_label == ("sub-01", "02")
    assert config.training.amp is False
    assert config.heatmaps.methods == ("IG", "LRP")
    assert not (tmp_path / "out").exists()


def test_both_levels_in_one_call(tiny_bids, tmp_path):
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "group", "--skip-bids-validation"])
    assert config.analysis_level == ("participant", "group")


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda b, o: [b.parent / "missing", o, "participant"], "does not exist or is not a folder"),
        (lambda b, o: [b, b / "out", "participant"], "is inside bids_dir"),
        (lambda b, o: [b, b, "participant"], "is inside bids_dir"),
        (lambda b, o: [b, o, "participant", "--participant-label", "07"], "sub-07 not found"),
        (lambda b, o: [b, o, "participant", "--participant-label", "../01"], "invalid sub label"),
        (lambda b, o: [b, o, "participant", "--participant-label", "0 1"], "invalid sub label"),
        (lambda b, o: [b, o, "participant", "--participant-label", "a/b"], "invalid sub label"),
        (lambda b, o: [b, o, "participant", "--session-label", "x_y"], "invalid ses label"),
        (lambda b, o: [b, o, "participant", "--folds", "1"], "--folds 1"),
        (lambda b, o: [b, o, "participant", "--fold", "5"], "--fold 5"),
        (lambda b, o: [b, o, "participant", "--model", "nosuchnet"], "--model nosuchnet: unknown model"),
        (lambda b, o: [b, o, "participant", "--methods", "Magic"], "--methods Magic: unknown"),
        (lambda b, o: [b, o, "participant", "--resolution", "0"], "--resolution 0"),
        (lambda b, o: [b, o, "participant", "--reference-map", b / "none.nii.gz"], "--reference-map"),
        (lambda b, o: [b, o, "participant", "--anat-derivatives", b / "none"], "--anat-derivatives"),
        (lambda b, o: [b, o, "participant", "--config-file", b / "none.toml"], "cannot read config file"),
        (lambda b, o: [b, o, "participant", "--resolution", "0.4"], "--resolution 0.4 is out of range: it must be "
                                                                    "between 0.5 and 8 (default 2)"),
        (lambda b, o: [b, o, "participant", "--resolution", "9"], "--resolution 9 is out of range"),
        (lambda b, o: [b, o, "group", "--epochs", "0"], "--epochs 0 is out of range: it must be at least 1"),
        (lambda b, o: [b, o, "group", "--batch-size", "-2"], "--batch-size -2 is out of range"),
        (lambda b, o: [b, o, "group", "--patience", "-1"], "--patience -1 is out of range"),
        (lambda b, o: [b, o, "group", "--patience", "5", "--val-fraction", "0"],
         "--patience 5: early stopping needs a validation set"),
        (lambda b, o: [b, o, "group", "--steps", "-1"], "--steps -1 is out of range: it must be at least 0"),
        (lambda b, o: [b, o, "participant", "--input", "both", "--registration", "affine"],
         "--input both reads the log Jacobian of a deformation, which --registration affine does not compute; use "
         "--registration fireants or syn or --input intensity"),
        (lambda b, o: [b, o, "group", "--input-noise", "-0.1"], "--input-noise -0.1 is out of range"),
        (lambda b, o: [b, o, "group", "--learning-rate", "0"], "--learning-rate 0 is out of range: it must be "
                                                               "greater than 0"),
        (lambda b, o: [b, o, "group", "--val-fraction", "0.5"], "--val-fraction 0.5 is out of range: it must be "
                                                                "between 0 and 0.5 (0.5 exclusive)"),
        (lambda b, o: [b, o, "group", "--ig-steps", "0"], "--ig-steps 0 is out of range: it must be at least 1 "
                                                          "(default 32)"),
        (lambda b, o: [b, o, "group", "--occlusion-size", "0"], "--occlusion-size 0 is out of range"),
        (lambda b, o: [b, o, "group", "--occlusion-stride", "-5"], "--occlusion-stride -5 is out of range"),
        (lambda b, o: [b, o, "group", "--noise-steps", "0"], "--noise-steps 0 is out of range"),
        (lambda b, o: [b, o, "group", "--noise-lambda", "-1"], "--noise-lambda -1 is out of range"),
        (lambda b, o: [b, o, "group", "--lrp-epsilon", "0"], "--lrp-epsilon 0 is out of range"),
        (lambda b, o: [b, o, "group", "--heatmap-batch-size", "-1"], "--heatmap-batch-size -1 is out of range"),
        (lambda b, o: [b, o, "group", "--n-bootstrap", "-1"], "--n-bootstrap -1 is out of range"),
        (lambda b, o: [b, o, "participant", "--seed", "-1"], "--seed -1 is out of range"),
        (lambda b, o: [b, o, "participant", "--mem-gb", "-1"], "--mem-gb -1 is out of range"),
        (lambda b, o: [b, o, "group", "--covariates", "diagnosis", "scanner"],
         "participants.tsv has no column 'scanner' named by --covariates (columns: participant_id, diagnosis); "
         "fix --covariates or pass --covariates none"),
        (lambda b, o: [b, o, "group", "--cv", "leave-site-out"],
         "participants.tsv has no 'site' column (columns: participant_id, diagnosis); add one or use --cv kfold"),
        (lambda b, o: [b, o, "group", "--repeats", "0"], "--repeats 0 is out of range: it must be at least 1"),
        (lambda b, o: [b, o, "group", "--repeat", "1", "--repeats", "2"], "--repeat 1: it selects the repeat of a "
                                                                         "--fold job"),
        (lambda b, o: [b, o, "group", "--fold", "0", "--repeat", "2", "--repeats", "2"], "--repeat 2"),
        (lambda b, o: [b, o, "group", "--permutation-test", "-1"], "--permutation-test -1 is out of range"),
        (lambda b, o: [b, o, "participant", "--models", b.parent / "nomodels"], "does not exist"),
        (lambda b, o: [b, o, "participant", "--models", _models(b, "empty")],
         "holds no trained resnet3d model (expected {m}/resnet3d/fold-<k>/model.pt + model.json); train them"),
        (lambda b, o: [b, o, "participant", "--models", _models(b, "other", "wang2023/fold-0")],
         "holds no trained resnet3d model (expected {m}/resnet3d/fold-<k>/model.pt + model.json); it holds "
         "wang2023: pass --model wang2023"),
        (lambda b, o: [b, o, "participant", "--models", _models(b, "one", "resnet3d/fold-0") / "resnet3d"],
         "it is one model's folder: pass its parent, --models {m}"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tiny_bids, tmp_path, make_args, message):
    before = tree_digest(tiny_bids)
    out = tmp_path / "out"
    code, err = run_cli(capsys, *make_args(tiny_bids, out), "--skip-bids-validation")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    message = message.replace("{m}", str(tmp_path / "models"))
    assert lines[0].startswith("adheat: error:") and message in lines[0], lines[0]
    assert not out.exists()
    assert tree_digest(tiny_bids) == before


def test_missing_dataset_description(capsys, tiny_bids, tmp_path):
    (tiny_bids / "dataset_description.json").unlink()
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "participant")
    assert code == 2 and "dataset_description.json is missing" in err


def test_subject_without_t1w(capsys, tmp_path):
    root = write_tiny_bids(tmp_path / "bids", {"01": "AD", "02": "CN"})
    for f in (root / "sub-02" / "anat").iterdir():
        f.unlink()
    code, err = run_cli(capsys, root, tmp_path / "out", "participant", "--participant-label", "02",
                        "--skip-bids-validation")
    assert code == 2 and "sub-02 has no T1w image" in err and "anat/sub-02_T1w.nii.gz" in err
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(capsys, tiny_bids, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "out"), "everything"])
    assert exc.value.code == 2
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "group", "participant", "--skip-bids-validation")
    assert code == 2 and "analysis levels" in err


def test_faithfulness_fill_parses_and_a_bad_value_exits_2(capsys, tiny_bids, tmp_path):
    """--faithfulness-fill: mean by default, noisy-linear on request (the fills the curves know); another value exits
    2 and writes nothing."""
    import dataclasses

    from adheat_app.config import EvaluationOptions, option_choices
    from adheat_app.evaluation.faithfulness import FILLS

    assert option_choices(next(f for f in dataclasses.fields(EvaluationOptions) if f.name == "faithfulness_fill")) \
        == FILLS
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "group", "--faithfulness", "--faithfulness-fill",
                      "noisy-linear", "--skip-bids-validation"])
    assert config.evaluation.faithfulness and config.evaluation.faithfulness_fill == "noisy-linear"
    assert prepare([str(tiny_bids), str(tmp_path / "out"), "group",
                    "--skip-bids-validation"]).evaluation.faithfulness_fill == "mean"
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "bad"), "group", "--faithfulness-fill", "zero"])
    assert exc.value.code == 2 and "invalid choice: 'zero'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_output_under_bids_derivatives_is_allowed(tiny_bids):
    config = prepare([str(tiny_bids), str(tiny_bids / "derivatives" / "adheat"), "participant",
                      "--skip-bids-validation"])
    assert config.output_dir == tiny_bids / "derivatives" / "adheat"


def test_config_file_precedence_and_errors(capsys, tiny_bids, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[execution]\nseed = 7\nresolution = 3.0\n[training]\nfolds = 4\nepochs = 2\n'
                   '[heatmaps]\nmethods = ["IG"]\n')
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "--config-file", str(cfg),
                      "--epochs", "9", "--skip-bids-validation"])
    assert (config.execution.seed, config.execution.resolution) == (7, 3.0)
    assert (config.training.folds, config.training.epochs) == (4, 9)
    assert config.heatmaps.methods == ("IG",)
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"training": {"batch-size": 3}}))
    assert prepare([str(tiny_bids), str(tmp_path / "o"), "group", "--config-file", str(as_json),
                    "--skip-bids-validation"]).training.batch_size == 3
    cfg.write_text("[training]\nfoldz = 4\n")
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "participant", "--config-file", cfg)
    assert code == 2 and "unknown option 'foldz' in [training]" in err
    cfg.write_text("[training\n")
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "participant", "--config-file", cfg)
    assert code == 2 and "is not valid TOML" in err


def test_saved_config_round_trips(tiny_bids, tmp_path):
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "--seed", "3", "--methods", "IG",
                      "GGC", "--skip-bids-validation"])
    saved = tmp_path / "saved.toml"
    saved.write_text(config.to_toml())
    again = prepare([str(tiny_bids), str(tmp_path / "out"), "participant", "--config-file", str(saved)])
    assert again == config


@pytest.mark.skipif(bids.validator_command() is None, reason="bids-validator-deno is not installed")
def test_bids_validator_errors_are_shown_in_one_block(capsys, tiny_bids, tmp_path):
    (tiny_bids / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{not json")
    (tiny_bids / "sub-01" / "anat" / "sub-01_bold.nii.gz").write_bytes(b"\x00")
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "participant")
    assert code == 2
    assert "is not a valid BIDS dataset" in err and "--skip-bids-validation" in err
    assert "\n  " in err  # the validator's issues, one indented line each
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(bids.validator_command() is None, reason="bids-validator-deno is not installed")
def test_bids_validator_passes_a_valid_dataset(tiny_bids):
    bids.run_bids_validator(tiny_bids)


def test_missing_validator_warns_and_continues(monkeypatch, caplog, tiny_bids):
    monkeypatch.setattr(bids, "validator_command", lambda: None)
    with caplog.at_level("WARNING"):
        bids.run_bids_validator(tiny_bids)
    assert "bids-validator-deno is not installed" in caplog.text


def test_console_script_help():
    exe = Path(sys.executable).parent / "adheat"
    if not exe.exists():
        pytest.skip("the adheat console script is not installed in this environment (pip install -e .)")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--participant-label" in out.stdout


@pytest.mark.parametrize("valid", [False, True], ids=["usage-error", "run"])
def test_each_call_removes_its_log_handlers(tmp_path, capsys, valid):
    """A console handler left behind would write to this call's (by then closed) stderr on later log records."""
    import logging

    package = logging.getLogger("adheat_app")
    before = list(package.handlers)
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "CN"}) if valid else tmp_path / "missing"
    code, _ = run_cli(capsys, str(bids_dir), str(tmp_path / "out"), "group", "--skip-bids-validation")
    assert code in (0, 1, 2) and (valid or code == 2)
    assert package.handlers == before
    assert not [h for h in package.handlers if hasattr(h, "_adheat_console") or hasattr(h, "_adheat_run")]


def test_run_failure_exits_1_with_one_line_and_a_crash_file(capsys, tiny_bids, tmp_path, monkeypatch):
    """An unexpected error ends the run with exit 1, one log line and logs/crash-<run>.txt holding the traceback."""
    import adheat_app.workflows

    def fail(config, run_id):
        raise RuntimeError("disk controller on fire\nsecond line of detail")

    monkeypatch.setattr(adheat_app.workflows, "run_levels", fail)
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "participant", "--skip-bids-validation")
    assert code == 1
    [crash] = (tmp_path / "out" / "logs").glob("crash-*.txt")
    text = crash.read_text()
    assert "Traceback" in text and "RuntimeError: disk controller on fire" in text and "in fail" in text
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "run failed: RuntimeError: disk controller on fire (traceback in" in errors[0]
    assert "second line" not in err and str(crash) in errors[0]


def test_failed_scans_exit_1_with_a_crash_file_each(capsys, tiny_bids, tmp_path):
    """Noise images hold no brain: each scan fails alone with logs/crash-<key>.txt, and the run exits 1."""
    code, err = run_cli(capsys, tiny_bids, tmp_path / "out", "participant", "--skip-bids-validation",
                        "--skull-strip", "skip", "--registration", "affine", "--resolution", "4", "--nprocs", "1")
    assert code == 1
    assert "adheat: 2 item(s) failed; see" in err
    for sub in ("01", "02"):
        first = (tmp_path / "out" / "logs" / f"crash-sub-{sub}.txt").read_text().splitlines()[0]
        assert first.startswith(f"sub-{sub}: ") and "brain mask holds only" in first
        assert not (tmp_path / "out" / f"sub-{sub}" / "anat").exists()


def test_mixed_grids_are_an_input_error(tmp_path):
    """Preprocessed images at two resolutions in one output folder: the group level refuses to mix them."""
    import shutil

    from adheat_app.cohort import load_cohort
    from conftest import make_preprocessed_cohort

    config, derivs, cohort, _ = make_preprocessed_cohort(tmp_path, n_subjects=4, resolution=4.0)
    scan = cohort.scans[1]
    for path in (scan.image, scan.mask):
        shutil.move(path, path.with_name(path.name.replace("_res-4_", "_res-6_")))
    inputs = [T1wInput(s.subject, s.session, config.bids_dir) for s in cohort.scans]
    with pytest.raises(InputError, match=r"mix spaces/resolutions .*'4'.*'6'.*one --resolution"):
        load_cohort(config, derivs, inputs)
