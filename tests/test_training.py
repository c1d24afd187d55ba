"""Cross-validated training: subject-level folds, leakage guard, reproducibility, resume, per-fold jobs, errors.

Split logic is tested on in-memory cohorts (no images). Training runs on the
simulated, oracle-preprocessed cohort of ``conftest.make_preprocessed_cohort``
at 4 mm with a few epochs. The two slow tests check the point of the leakage
guard on real numbers: labels without signal give chance-level balanced
accuracy, planted atrophy gives a high one.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adheat_app.bids import read_participants
from adheat_app.cohort import Cohort, Scan, load_cohort
from adheat_app.config import build_config
from adheat_app.errors import InputError
from adheat_app.io import read_json
from adheat_app.training import (Fold, fold_dir, load_fold_model, make_folds, read_split, resolve_device,
                                 run_training)
from adheat_app.training import loop
from adheat_app.training.device import deterministic
from adheat_app.training.folds import check_labels, check_no_leakage, min_subjects_per_class
from adheat_app.volumes import load_volumes
from conftest import make_preprocessed_cohort

#: Small, fast training used by the functional tests (not meant to learn much): three epochs with a validation
#: set and early stopping, shifts and input noise, so those code paths run too.
QUICK = {"training__folds": 2, "training__steps": 0, "training__epochs": 3, "training__patience": 3,
         "training__val_fraction": 0.2, "training__batch_size": 4, "training__augment": True}


def fake_cohort(n_subjects: int, sessions: int = 1, n_mci: int = 0) -> Cohort:
    """A cohort of scans without images (enough for splitting): alternating AD/CN, then MCI."""
    scans = []
    for i in range(n_subjects + n_mci):
        diagnosis = "MCI" if i >= n_subjects else ("AD" if i % 2 else "CN")
        for ses in range(sessions):
            session = f"{ses + 1:02d}" if sessions > 1 else None
            scans.append(Scan(f"{i:03d}", session, Path(f"/x/{i}_{ses}.nii.gz"), Path(f"/x/{i}_{ses}_mask.nii.gz"),
                              diagnosis, {"AD": 1, "CN": 0}.get(diagnosis)))
    return Cohort(tuple(scans), "MNI152NLin2009cAsym", "4", "AD", "CN")


def subjects(scans) -> set[str]:
    return {s.subject for s in scans}


def state_dicts_equal(first: Path, second: Path) -> bool:
    a = torch.load(first, weights_only=True)
    b = torch.load(second, weights_only=True)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- folds -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sessions", [1, 2])
def test_folds_are_grouped_by_subject_stratified_and_complete(sessions):
    cohort = fake_cohort(30, sessions=sessions, n_mci=4)
    folds = make_folds(cohort, 5, seed=1, val_fraction=0.2)
    assert [f.index for f in folds] == list(range(5))
    tested = [s for f in folds for s in f.test]
    assert sorted(s.key for s in tested) == sorted(s.key for s in cohort.labelled)  # each scan tested once
    for fold in folds:
        train, val, test = subjects(fold.train), subjects(fold.val), subjects(fold.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(cohort.labelled)
        assert {s.target for s in fold.test} == {0, 1} and {s.target for s in fold.val} == {0, 1}
        assert all(s.diagnosis != "MCI" for s in fold.train + fold.val + fold.test)
        assert len(val) == pytest.approx(0.2 * (len(train) + len(val)), abs=1)
        # sessions of a subject travel together
        for name, scans in fold.sets().items():
            assert all(sum(s.subject == sub for s in scans) == sessions for sub in subjects(scans)), name


def test_folds_depend_only_on_seed_and_cohort():
    cohort = fake_cohort(20, sessions=2)
    shuffled = Cohort(tuple(reversed(cohort.scans)), cohort.space, cohort.res_label, "AD", "CN")
    first = make_folds(cohort, 4, seed=7, val_fraction=0.25)
    assert first == make_folds(shuffled, 4, seed=7, val_fraction=0.25)
    assert first != make_folds(cohort, 4, seed=8, val_fraction=0.25)


def test_leakage_guard_raises():
    cohort = fake_cohort(6)
    a, b, c = cohort.labelled[:2], cohort.labelled[2:4], cohort.labelled[4:]
    check_no_leakage(Fold(0, a, b, c))
    with pytest.raises(RuntimeError, match="leakage in fold 3.*subject\\(s\\) 000 in both train and test"):
        check_no_leakage(Fold(3, a, b, c + a[:1]))


# --- errors ------------------------------------------------------------------------------------------------------

def _config(tmp_path: Path, labels: dict[str, str], **training):
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    rows = ["participant_id\tdiagnosis"] + [f"sub-{s}\t{d}" for s, d in labels.items()]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    return build_config(bids, tmp_path / "out", ("group",), {}, {"training": training})


def _cohort(config, labels: dict[str, str]) -> Cohort:
    tr = config.training
    scans = tuple(Scan(s, None, Path(f"/x/{s}.nii.gz"), Path(f"/x/{s}_m.nii.gz"), d,
                       {tr.positive_label: 1, tr.negative_label: 0}.get(d)) for s, d in labels.items())
    return Cohort(scans, "MNI152NLin2009cAsym", "4", tr.positive_label, tr.negative_label)


def test_labels_not_found_lists_the_labels_of_participants_tsv(tmp_path):
    labels = {f"{i:02d}": d for i, d in enumerate(["Dementia", "Control", "MCI"] * 4)}
    config = _config(tmp_path, labels)
    with pytest.raises(InputError, match=r"participants.tsv: no subject has --positive-label 'AD' or "
                                         r"--negative-label 'CN'.*labels found: Control, Dementia, MCI"):
        check_labels(config, _cohort(config, labels))
    fixed = _config(tmp_path, labels, positive_label="Dementia", negative_label="Control", folds=4)
    check_labels(fixed, _cohort(fixed, labels))


def test_one_class_cohort_is_an_input_error(tmp_path):
    labels = {f"{i:02d}": d for i, d in enumerate(["AD", "CN"] * 5)}
    config = _config(tmp_path, labels)
    only_ad = {s: d for s, d in labels.items() if d == "AD"}
    with pytest.raises(InputError, match="no selected scan has --negative-label 'CN' \\(one-class cohort\\)"):
        check_labels(config, _cohort(config, only_ad))


def test_fewer_subjects_per_class_than_folds(tmp_path):
    labels = {f"{i:02d}": d for i, d in enumerate(["AD", "CN", "CN", "CN", "CN", "AD", "CN", "CN"])}
    config = _config(tmp_path, labels, folds=3)
    with pytest.raises(InputError, match="--folds 3: only 2 AD subject\\(s\\).*at least 3 per class.*"
                                         "add subjects \\(at least 4 per class, with --folds 2\\)"):
        check_labels(config, _cohort(config, labels))


@pytest.mark.parametrize(("folds", "minimum"), [(2, 4), (3, 3), (4, 4), (5, 5), (10, 10)])
def test_minimum_subjects_per_class(folds, minimum):
    """With n subjects of a class, a test set takes at most ceil(n / folds): 2 must stay for training."""
    assert min_subjects_per_class(folds) == minimum
    assert minimum - math.ceil(minimum / folds) >= 2 and minimum >= folds
    assert minimum == folds or (minimum - 1) - math.ceil((minimum - 1) / folds) < 2


def test_three_per_class_with_two_folds_is_refused_before_training(tmp_path):
    """3 AD + 3 CN, --folds 2: a test set takes 2 of a class, leaving 1 for the SVM's inner CV (it failed there)."""
    labels = {f"{i:02d}": d for i, d in enumerate(["AD", "CN"] * 3)}
    config = _config(tmp_path, labels, folds=2)
    with pytest.raises(InputError, match="--folds 2: only 3 AD .*need at least 4 per class.*use --folds 3, or add"):
        check_labels(config, _cohort(config, labels))
    (tmp_path / "three").mkdir()
    three = _config(tmp_path / "three", labels, folds=3)
    check_labels(three, _cohort(three, labels))


def test_missing_label_column(tmp_path):
    config = _config(tmp_path, {"01": "AD", "02": "CN"}, label_column="group")
    with pytest.raises(InputError, match="has no column 'group'.*set --label-column"):
        read_participants(config.bids_dir, config.training.label_column)
    with pytest.raises(InputError, match="has no column 'group'"):
        load_cohort(config, None, [])


def test_resolve_device(tmp_path):
    config = _config(tmp_path, {"01": "AD"})
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(config).type == expected
    assert resolve_device(config.replace("execution", device="cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cuda"):
            resolve_device(config.replace("execution", device="cuda"))


def test_deterministic_mode_does_not_fill_new_tensors_with_nan():
    """torch's NaN fill of new tensors (a debugging aid) is off inside ``deterministic`` and restored after."""
    before = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic(torch.device("cpu"), 0):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert torch.utils.deterministic.fill_uninitialized_memory is before


# --- training loop pieces ----------------------------------------------------------------------------------------

def test_augment_is_small_seeded_and_keeps_background():
    volume = np.zeros((1, 1, 12, 12, 12), np.float32)
    volume[0, 0, 4:8, 4:8, 4:8] = 1.0
    first = loop.augment(volume, np.random.default_rng(0))
    assert np.array_equal(first, loop.augment(volume, np.random.default_rng(0)))
    assert np.count_nonzero(first) == 64  # shifted, not resized
    assert 0.8 < first[first != 0].mean() < 1.2


def test_batches_never_leave_a_single_scan():
    sizes = [len(b) for b in loop.batches(np.arange(9), 4)]
    assert sizes == [4, 5] and [len(b) for b in loop.batches(np.arange(8), 4)] == [4, 4]


def test_class_weights_balance_the_classes():
    weights = loop.class_weights(np.array([1, 0, 0, 0]))
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])


def _settings(**changes) -> loop.TrainSettings:
    defaults = dict(epochs=30, steps=600, batch_size=8, learning_rate=1e-3, weight_decay=0.0, optimizer="adamw",
                    schedule="cosine", patience=0, input_noise=0.0, augment=False, amp=False, seed=0)
    return loop.TrainSettings(**{**defaults, **changes})


def test_the_step_budget_sets_the_epochs_whatever_the_cohort_size():
    # 16 training scans in batches of 8: 2 steps an epoch; 17: still 2 (a last batch of one joins the previous)
    assert loop.n_epochs(_settings(steps=600), 16) == 300
    assert loop.n_epochs(_settings(steps=600), 17) == 300
    assert loop.n_epochs(_settings(steps=600), 160) == 30
    assert loop.n_epochs(_settings(steps=601), 160) == 31  # rounded up to whole epochs
    assert loop.n_epochs(_settings(steps=0, epochs=7), 160) == 7


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factors = [loop.learning_rate_factor(i, 100, "cosine") for i in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[10] == 1.0 and factors[10 + 45] == pytest.approx(0.5)  # half-way through the decay
    assert factors[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 89 / 90))) and factors[-1] < 0.001
    assert {loop.learning_rate_factor(i, 100, "constant") for i in range(100)} == {1.0}


def test_input_noise_touches_only_brain_voxels_with_the_asked_sd():
    batch = np.zeros((2, 1, 20, 20, 20), np.float32)
    batch[:, :, 5:15, 5:15, 5:15] = 1.0
    noisy = loop.add_input_noise(batch, 0.5, np.random.default_rng(0))
    brain = batch != 0
    assert (noisy[~brain] == 0).all()
    assert (noisy[brain] - 1).std() == pytest.approx(0.5, rel=0.05)
    again = loop.add_input_noise(batch, 0.5, np.random.default_rng(0))
    assert np.array_equal(noisy, again)


def test_presets_set_the_papers_training_and_explicit_options_win(tmp_path):
    from adheat_app.config import PRESETS

    default = build_config(tmp_path, tmp_path / "out", ("group",), {}, {}).training
    assert default.preset == "adheat" and default.model == "resnet3d" and default.patience == 0
    wang = build_config(tmp_path, tmp_path / "out", ("group",), {}, {"training": {"preset": "wang2023"}}).training
    assert (wang.model, wang.optimizer, wang.learning_rate, wang.weight_decay, wang.batch_size, wang.epochs,
            wang.steps, wang.patience) == ("wang2023", "adam", 1e-4, 1e-4, 5, 200, 0, 10)
    rieke = build_config(tmp_path, tmp_path / "out", ("group",), {"training": {"epochs": 3}},
                         {"training": {"preset": "rieke2018", "batch_size": 2}}).training
    assert (rieke.model, rieke.learning_rate, rieke.epochs, rieke.batch_size, rieke.steps) == (
        "rieke2018", 1e-4, 3, 2, 0)
    assert set(PRESETS) == {"adheat", "rieke2018", "wang2023"}


# --- training on a simulated cohort ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """12 subjects (2 MCI more) at 4 mm, trained once with QUICK settings."""
    root = tmp_path_factory.mktemp("train")
    config, derivs, cohort, _ = make_preprocessed_cohort(root, n_subjects=12, seed=2, effect_size=0.4, n_mci=2,
                                                         **QUICK)
    completed = run_training(config, derivs, cohort)
    return config, derivs, cohort, completed


def _rerun(small, root: Path, **training):
    """The small cohort's configuration with another output folder (and training changes)."""
    config, derivs, cohort, _ = small
    other = config.replace("training", **training) if training else config
    other = type(config)(config.bids_dir, root / "out", config.analysis_level, other.execution,
                         other.preprocessing, other.training, other.heatmaps, other.evaluation)
    return other, type(derivs)(other.output_dir, config.bids_dir), cohort


def test_outputs_of_a_full_run(small):
    config, derivs, cohort, completed = small
    assert completed == [0, 1]
    for k in completed:
        folder = fold_dir(config, k)
        assert folder == config.output_dir / "models" / "resnet3d" / f"fold-{k}"
        assert not (folder / "checkpoint.pt").exists()
        card = read_json(folder / "model.json")
        model, loaded_card = load_fold_model(folder, torch.device("cpu"))
        assert loaded_card == card and not model.training
        assert card["Parameters"] == sum(p.numel() for p in model.parameters())
        assert card["Model"] == "resnet3d" and card["Fold"] == k and card["Seed"] == 2
        assert card["Threads"] == (config.execution.omp_nthreads or torch.get_num_threads())
        assert card["Input"]["Shape"] == list(nib_shape(cohort)) and card["Input"]["ResLabel"] == "4"
        assert card["Labels"] == {"0": "CN", "1": "AD"} and "torch" in card["Software"]
        assert 1 <= card["BestEpoch"] <= card["EpochsRun"] <= 3
        curve = pd.read_csv(folder / "training_curve.tsv", sep="\t")
        assert list(curve["epoch"]) == list(range(1, card["EpochsRun"] + 1))
        assert (folder / "training_curve.png").stat().st_size > 5000
        split = read_split(folder)
        assert list(split.columns) == ["subject", "session", "diagnosis", "set"]
        assert set(split["set"]) == {"train", "val", "test"} and "MCI" not in set(split["diagnosis"])
        assert split["subject"].map(type).eq(str).all() and split["session"].isna().all()
        # the model card's metrics are those of the saved model on the fold's test scans
        test = [s for s in cohort.labelled if s.subject in set(split.loc[split["set"] == "test", "subject"])]
        volumes = load_volumes([s.image for s in test], config.work_dir)
        with torch.no_grad():
            prob = torch.softmax(model(torch.from_numpy(np.asarray(volumes, np.float32)[:, None])), 1)[:, 1]
        predicted = pd.read_csv(folder / "predictions.tsv", sep="\t", dtype={"subject": str})
        # trained and evaluated on CUDA (TF32), the written probabilities differ from the CPU's by ~1e-5
        tolerance = 1e-3 if torch.cuda.is_available() else 1e-5
        assert predicted["probability"].to_numpy() == pytest.approx(prob.numpy(), abs=tolerance)
        assert card["Metrics"]["accuracy"] == pytest.approx(np.mean((prob.numpy() >= 0.5) == [s.target for s in test]))
    group = derivs.root / "group"
    metrics = pd.read_csv(group / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    assert list(metrics["fold"]) == ["0", "1", "mean", "sd", "pooled"] and set(metrics["model"]) == {"resnet3d"}
    pooled = metrics[metrics["fold"] == "pooled"].iloc[0]
    assert pooled["n_test"] == len(cohort.labelled)
    assert pooled["roc_auc_ci_low"] <= pooled["roc_auc"] <= pooled["roc_auc_ci_high"]
    assert 0 <= pooled["p_value"] <= 1 and isinstance(pooled["better_than_chance"], (bool, np.bool_))
    predictions = pd.read_csv(group / "predictions.tsv", sep="\t", dtype={"subject": str})
    assert list(predictions.columns) == ["model", "fold", "subject", "session", "diagnosis", "target",
                                         "probability", "predicted"]
    assert sorted(predictions["subject"]) == sorted(s.subject for s in cohort.labelled)
    assert (predictions["predicted"] == (predictions["probability"] >= 0.5)).all()
    assert (group / "desc-resnet3d_roc.png").stat().st_size > 5000


def nib_shape(cohort: Cohort) -> tuple[int, ...]:
    import nibabel as nib

    return nib.load(cohort.scans[0].image).shape


def test_same_seed_gives_same_split_and_weights(small, tmp_path):
    config, derivs, cohort = _rerun(small, tmp_path)
    run_training(config, derivs, cohort)
    for k in (0, 1):
        first, second = fold_dir(small[0], k), fold_dir(config, k)
        assert (first / "split.tsv").read_bytes() == (second / "split.tsv").read_bytes()
        assert state_dicts_equal(first / "model.pt", second / "model.pt")


def test_resume_after_a_kill_gives_the_same_weights(small, tmp_path, monkeypatch, caplog):
    config, derivs, cohort = _rerun(small, tmp_path)
    real_save = loop.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, derivs, cohort)
    assert (fold_dir(config, 0) / "checkpoint.pt").is_file() and not (fold_dir(config, 0) / "model.json").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    with caplog.at_level(logging.INFO, logger="adheat_app.training"):
        run_training(config, derivs, cohort)
    assert "resuming after epoch 2" in caplog.text
    for k in (0, 1):
        assert state_dicts_equal(fold_dir(small[0], k) / "model.pt", fold_dir(config, k) / "model.pt")


def test_one_fold_job_then_a_group_run_trains_the_rest(small, tmp_path, caplog):
    config, derivs, cohort = _rerun(small, tmp_path)
    assert run_training(config.replace("training", fold=1), derivs, cohort) == [1]
    assert (fold_dir(config, 1) / "model.json").is_file() and not fold_dir(config, 0).exists()
    assert not (derivs.root / "group" / "cv_metrics.tsv").exists()
    assert (fold_dir(config, 1) / "split.tsv").read_bytes() == (fold_dir(small[0], 1) / "split.tsv").read_bytes()
    stamp = (fold_dir(config, 1) / "model.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="adheat_app.training"):
        assert run_training(config, derivs, cohort) == [0, 1]
    assert "fold 1: complete model found" in caplog.text and "fold 0: complete" not in caplog.text
    assert (fold_dir(config, 1) / "model.pt").stat().st_mtime_ns == stamp
    assert (derivs.root / "group" / "cv_metrics.tsv").is_file()
    # other settings make the completed folds stale: they are trained again
    changed, _, _ = _rerun(small, tmp_path, epochs=2, patience=2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adheat_app.training"):
        run_training(changed, derivs, cohort)
    assert "complete model found" not in caplog.text
    assert read_json(fold_dir(config, 1) / "model.json")["EpochsRun"] <= 2


def test_chance_verdict_of_perfect_random_and_reversed_scores():
    from adheat_app.training.metrics import chance_verdict

    target = np.array([1, 0] * 5)
    scores = np.linspace(0.05, 0.45, 10) + 0.5 * target  # every AD score above every CN score, no ties
    perfect = pd.DataFrame({"subject": [f"{i:02d}" for i in range(10)], "target": target, "probability": scores})
    verdict = chance_verdict(perfect, 200, seed=0)
    assert verdict["roc_auc_ci_low"] == pytest.approx(1.0) and verdict["roc_auc_ci_high"] == pytest.approx(1.0)
    assert verdict["better_than_chance"]
    assert verdict["p_value"] == pytest.approx(1 / 252, rel=1e-9)  # exact: U = 25 of 25 pairs, 1 / C(10, 5)
    reversed_ = perfect.assign(probability=1 - perfect["probability"])
    verdict = chance_verdict(reversed_, 200, seed=0)
    assert verdict["roc_auc_ci_high"] == pytest.approx(0.0) and not verdict["better_than_chance"]
    assert verdict["p_value"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noise = pd.DataFrame({"subject": [f"{i:02d}" for i in range(40)], "target": [1, 0] * 20,
                          "probability": rng.random(40)})
    verdict = chance_verdict(noise, 500, seed=0)
    assert verdict["roc_auc_ci_low"] < 0.5 < verdict["roc_auc_ci_high"] and not verdict["better_than_chance"]


def test_chance_verdict_resamples_subjects_not_sessions():
    from adheat_app.training.metrics import chance_verdict

    # two sessions per subject: the p-value is that of 8 subjects (their mean scores), not of 16 scans
    target = np.array([1, 0] * 4)
    scores = np.linspace(0.05, 0.45, 8) + 0.5 * target
    rows = pd.DataFrame({"subject": np.repeat([f"{i:02d}" for i in range(8)], 2), "target": np.repeat(target, 2),
                         "probability": np.repeat(scores, 2) + np.tile([-0.01, 0.01], 8)})
    assert chance_verdict(rows, 100, seed=0)["p_value"] == pytest.approx(1 / 70, rel=1e-9)  # 1 / C(8, 4)


def test_input_auto_reads_the_log_jacobian_only_when_every_scan_has_one(tmp_path, caplog):
    """The default --input auto: both channels after SyN (every scan has a log Jacobian), intensity otherwise,
    with a warning naming how many scans lack one; an explicit --input is kept. The cohort holds the channels."""
    from adheat_app.cohort import input_channels
    from adheat_app.inputs import input_kind, log_input

    def scans(with_jacobian: int, total: int = 4) -> tuple[Scan, ...]:
        return tuple(Scan(f"{i:02d}", None, tmp_path / f"{i}.nii.gz", tmp_path / f"{i}_mask.nii.gz", "AD", 1,
                          tmp_path / f"{i}_logjac.nii.gz" if i < with_jacobian else None) for i in range(total))

    config = build_config(tmp_path, tmp_path / "out", ("group",), {}, {})
    assert config.training.input == "auto"
    assert input_channels("auto", scans(4)) == ("intensity", "logjacobian")
    assert input_channels("auto", scans(0)) == ("intensity",)
    assert input_channels("auto", scans(3)) == ("intensity",)
    assert input_channels("logjacobian", scans(0)) == ("logjacobian",)
    assert [input_kind(input_channels(k, scans(4))) for k in ("intensity", "logjacobian", "both")] == \
        ["intensity", "logjacobian", "both"]
    partial = Cohort(scans(3), "MNI152NLin2009cAsym", "4", "AD", "CN", input_channels("auto", scans(3)))
    with caplog.at_level(logging.WARNING):
        log_input(config, partial)
    assert "1 of 4 scans have no log Jacobian map" in caplog.text


def test_log_of_a_run_without_validation_names_no_absent_quantity(small, tmp_path, caplog):
    config, derivs, cohort = _rerun(small, tmp_path, val_fraction=0.0, patience=0, epochs=2)
    with caplog.at_level(logging.INFO, logger="adheat_app"):
        run_training(config, derivs, cohort)
    epochs = [r.getMessage() for r in caplog.records if r.funcName == "train_fold" and "train loss" in r.getMessage()]
    assert len(epochs) == 4 and not any("val " in line for line in epochs), epochs
    assert not re.search(r"\bnan\b", caplog.text, re.IGNORECASE), caplog.text


# --- repeated cross-validation, leave-site-out, the permutation test ----------------------------------------------

def test_repeats_keep_repeat_0_and_add_new_splits_with_their_spread(small, tmp_path):
    """--repeats 2: repeat 0 is the plain run (same split and weights), repeat 1 a new split; the table shows each
    repeat's pooled metrics and their SD; the pooled row is their mean; every scan is predicted once per repeat;
    a --fold --repeat job trains only its folder."""
    from adheat_app.training.folds import repeat_seed

    config, derivs, cohort = _rerun(small, tmp_path, repeats=2)
    assert repeat_seed(2, 0) == 2 and repeat_seed(2, 1) != 2
    assert run_training(config.replace("training", fold=1, repeat=1), derivs, cohort) == [1]
    assert (fold_dir(config, 1, 1) / "model.json").is_file() and not fold_dir(config, 0, 1).exists()
    assert fold_dir(config, 1, 1) == config.models_dir / "resnet3d" / "repeat-1" / "fold-1"
    run_training(config, derivs, cohort)
    for k in (0, 1):
        assert (fold_dir(config, k) / "split.tsv").read_bytes() == (fold_dir(small[0], k) / "split.tsv").read_bytes()
        assert state_dicts_equal(fold_dir(small[0], k) / "model.pt", fold_dir(config, k) / "model.pt")
        assert read_json(fold_dir(config, k, 1) / "model.json")["Repeat"] == 1
    assert any(not read_split(fold_dir(config, k)).equals(read_split(fold_dir(config, k, 1))) for k in (0, 1))
    group = derivs.root / "group"
    predictions = pd.read_csv(group / "predictions.tsv", sep="\t", dtype={"subject": str})
    assert list(predictions.columns[:3]) == ["model", "repeat", "fold"]
    assert (predictions.groupby(["repeat", "subject"]).size() == 1).all() and set(predictions["repeat"]) == {0, 1}
    metrics = pd.read_csv(group / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    assert list(metrics["fold"]) == ["0", "1", "0", "1", "repeat-0", "repeat-1", "mean", "sd", "sd-repeats",
                                     "pooled"]
    rows = metrics.set_index("fold")
    assert rows.loc["pooled", "roc_auc"] == pytest.approx(rows.loc[["repeat-0", "repeat-1"], "roc_auc"].mean())
    assert rows.loc["sd-repeats", "roc_auc"] == pytest.approx(rows.loc[["repeat-0", "repeat-1"], "roc_auc"].std())
    plain = pd.read_csv(small[1].root / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str}).set_index("fold")
    assert rows.loc["repeat-0", "roc_auc"] == pytest.approx(plain.loc["pooled", "roc_auc"])
    verdict = read_json(config.models_dir / "resnet3d" / "verdict.json")
    assert verdict["Repeats"] == 2 and "one of the 2 repeats" in verdict["IntervalMethod"]
    assert len(verdict["TrainingKeys"]) == 4


def test_chance_verdict_with_repeats_draws_one_repeat_per_resample():
    """Two repeats, one perfect and one reversed: each resample scores one of them, so the interval spans both
    (a single repeat's interval is a point); one repeat resamples exactly as without the column."""
    from adheat_app.training.metrics import chance_verdict

    target = np.array([1, 0] * 5)
    scores = np.linspace(0.05, 0.45, 10) + 0.5 * target
    one = pd.DataFrame({"subject": [f"{i:02d}" for i in range(10)], "target": target, "probability": scores})
    two = pd.concat([one.assign(repeat=0), one.assign(repeat=1, probability=1 - scores)], ignore_index=True)
    verdict = chance_verdict(two, 200, seed=0)
    assert verdict["roc_auc_ci_low"] == pytest.approx(0.0) and verdict["roc_auc_ci_high"] == pytest.approx(1.0)
    assert chance_verdict(one.assign(repeat=0), 100, seed=3) == chance_verdict(one, 100, seed=3)


def test_a_reliably_below_chance_auc_is_named(small, tmp_path, caplog):
    """Reversed scores: interval entirely under 0.5, below_chance in the table, BelowChance in verdict.json, and a
    warning that names it as a finding (confounded folds)."""
    from adheat_app.training.metrics import chance_verdict
    from adheat_app.training.runner import write_group_results

    target = np.array([1, 0] * 5)
    reversed_ = pd.DataFrame({"subject": [f"{i:02d}" for i in range(10)], "target": target,
                              "probability": 1 - (np.linspace(0.05, 0.45, 10) + 0.5 * target)})
    assert chance_verdict(reversed_, 100, seed=0)["below_chance"]
    config, derivs, cohort = _rerun(small, tmp_path)
    for k in (0, 1):  # the small run's folds with every probability flipped
        folder = fold_dir(config, k)
        folder.mkdir(parents=True)
        for name in ("model.json", "split.tsv"):
            (folder / name).write_bytes((fold_dir(small[0], k) / name).read_bytes())
        rows = pd.read_csv(fold_dir(small[0], k) / "predictions.tsv", sep="\t", dtype={"subject": str})
        rows["probability"] = np.where(rows["target"] == 1, 0.1, 0.9) + 0.01 * np.arange(len(rows))
        rows.to_csv(folder / "predictions.tsv", sep="\t", index=False)
    with caplog.at_level(logging.WARNING):
        table = write_group_results(config, derivs)
    pooled = table.set_index("fold").loc["pooled"]
    assert pooled["roc_auc_ci_high"] < 0.5 and pooled["below_chance"] and not pooled["better_than_chance"]
    assert read_json(config.models_dir / "resnet3d" / "verdict.json")["BelowChance"] is True
    assert "reliably BELOW chance" in caplog.text and "confounded folds" in caplog.text


def _site_cohort(tmp_path: Path, sites: dict[str, str], n: int = 12) -> Cohort:
    """A fake cohort of ``n`` subjects (alternating CN/AD) and a participants.tsv with their ``site``."""
    cohort = fake_cohort(n)
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = ["participant_id\tdiagnosis\tsite"] + [f"sub-{s.subject}\t{s.diagnosis}\t{sites.get(s.subject, 'n/a')}"
                                                  for s in cohort.scans]
    (tmp_path / "participants.tsv").write_text("\n".join(rows) + "\n")
    return cohort


def test_leave_site_out_folds_test_one_site_each(tmp_path):
    from adheat_app.training.folds import cohort_folds, with_cv

    cohort = _site_cohort(tmp_path, {f"{i:03d}": "ABC"[i % 3] for i in range(12)})
    config = build_config(tmp_path, tmp_path / "out", ("group",), {},
                          {"training": {"cv": "leave-site-out", "val_fraction": 0.2}})
    config = with_cv(config, cohort)
    assert config.training.folds == 3
    folds = cohort_folds(config, cohort)
    site_of = {f"{i:03d}": "ABC"[i % 3] for i in range(12)}
    for fold, site in zip(folds, "ABC"):
        assert {site_of[s.subject] for s in fold.test} == {site}
        assert site not in {site_of[s.subject] for s in (*fold.train, *fold.val)} and fold.val
        check_no_leakage(fold)
    assert cohort_folds(config, cohort, 1)[0].test == folds[0].test  # repeats keep the sites, change the seeds
    with pytest.raises(InputError, match="folds are numbered 0 to 2"):  # a --fold job past the last site
        with_cv(config.replace("training", fold=3), cohort)


@pytest.mark.parametrize(("sites", "message"), [
    (None, "participants.tsv has no 'site' column"),
    ({f"{i:03d}": "A" for i in range(12)}, "names 1 site(s) in column 'site'"),
    ({**{f"{i:03d}": "A" for i in range(12)}, "001": "B"}, "site 'B' of participants.tsv has subjects of one class"),
    ({f"{i:03d}": "AB"[i % 2 or i > 5] for i in range(1, 12)}, "gives no 'site' for sub-000"),
])
def test_leave_site_out_refuses_what_it_cannot_split(tmp_path, sites, message):
    from adheat_app.training.folds import check_cv

    cohort = _site_cohort(tmp_path, sites or {})
    if sites is None:
        (tmp_path / "participants.tsv").write_text("participant_id\tdiagnosis\n" + "".join(
            f"sub-{s.subject}\t{s.diagnosis}\n" for s in cohort.scans))
    config = build_config(tmp_path, tmp_path / "out", ("group",), {}, {"training": {"cv": "leave-site-out"}})
    with pytest.raises(InputError, match=re.escape(message)):
        check_cv(config)


def test_permuted_labels_keep_classes_sessions_and_strata():
    from adheat_app.training.permutation import permutation_p_value, permuted_cohort

    cohort = fake_cohort(12, sessions=2, n_mci=1)
    strata = {f"{i:03d}": "AB"[i >= 6] for i in range(12)}
    permuted = permuted_cohort(cohort, 5, strata)
    labels = {s.subject: s.target for s in permuted.scans}
    assert all(labels[s.subject] == s.target for s in permuted.scans)  # sessions share their subject's label
    for site in "AB":
        members = [subject for subject, stratum in strata.items() if stratum == site]
        assert sorted(labels[m] for m in members) == sorted(s.target for s in cohort.scans if s.subject in members
                                                            and s.session == "01")
    assert labels != {s.subject: s.target for s in cohort.scans}
    assert [s.target for s in permuted.scans if s.diagnosis == "MCI"] == [None, None]
    assert permutation_p_value(0.8, np.array([0.5, 0.9, 0.8])) == pytest.approx(3 / 4)
    assert permutation_p_value(0.99, np.array([0.5, 0.6])) == pytest.approx(1 / 3)


@pytest.mark.slow
def test_leave_site_out_with_repeats_and_a_permutation_test_end_to_end(tmp_path, monkeypatch):
    """The group level from the command line on a 12-subject, two-site cohort (4 mm, 2 epochs): --cv leave-site-out
    (each fold tests one site), --repeats 2 (a second repeat's fold models and out-of-fold maps, its spread in
    cv_metrics.tsv) and
    --permutation-test 2 (p from the permuted AUCs, recorded in verdict.json; a rerun trains nothing); the nested
    test of the CNN beyond the covariates and the methods text follow; the overlap scores read both repeats' maps
    (n_repeats 2, every value inside its interval). About a minute on 2 cores."""
    from adheat_app.cli.run import main
    from adheat_app.training import permutation

    config, derivs, cohort, _ = make_preprocessed_cohort(tmp_path, n_subjects=12, seed=5, effect_size=0.4, sites=2)
    code = main([str(config.bids_dir), str(config.output_dir), "group", "--resolution", "4", "--seed", "5",
                 "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1", "--cv", "leave-site-out",
                 "--repeats", "2", "--permutation-test", "2", "--steps", "0", "--epochs", "2", "--methods",
                 "Saliency", "--n-bootstrap", "20", "--n-permutations", "0"])
    assert code == 0
    site = read_participants(config.bids_dir)["site"]
    models = config.output_dir / "models" / "resnet3d"
    for repeat in ("", "repeat-1/"):
        tested = [set(site[read_split(models / f"{repeat}fold-{k}").query("set == 'test'")["subject"]])
                  for k in (0, 1)]
        assert all(len(sites) == 1 for sites in tested) and tested[0] != tested[1]
    group = config.output_dir / "group"
    metrics = pd.read_csv(group / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    assert {"repeat-1", "sd-repeats", "pooled"} <= set(metrics.loc[metrics["model"] == "resnet3d", "fold"])
    permutations = pd.read_csv(group / "permutation_test.tsv", sep="\t")
    verdict = read_json(models / "verdict.json")
    observed = read_json(group / "permutation_test.json")["ObservedRocAuc"]
    assert list(permutations["permutation"]) == [1, 2] and verdict["Permutations"] == 2
    assert verdict["PermutationPValue"] == pytest.approx((1 + (permutations["roc_auc"] >= observed).sum()) / 3)
    assert verdict["CrossValidation"] == "leave-site-out" and verdict["Repeats"] == 2
    assert (group / "covariates_nested_test.tsv").is_file() and (config.output_dir / "group.html").is_file()
    repeat_maps = sorted((models / "repeat-1").glob("sub-*/anat/*_desc-Saliency_heatmap.nii.gz"))
    assert len(repeat_maps) == 12 and len(list(config.output_dir.glob("sub-*/anat/*_desc-Saliency_heatmap.nii.gz"))) == 12
    card = read_json(repeat_maps[0].with_name(repeat_maps[0].name.replace(".nii.gz", ".json")))
    assert card["Repeat"] == 1 and card["Fold"] in (0, 1)
    citation = (config.output_dir / "logs" / "CITATION.md").read_text()
    assert "leave-site-out cross-validation" in citation and "permutations of the diagnoses" in citation
    assert "one of the 2 repeats of the cross-validation at random, the same for every map" in citation
    overlap = pd.read_csv(group / "overlap.tsv", sep="\t")  # every repeat's maps in the scores and intervals
    repeats = overlap.groupby("method")["n_repeats"].max()
    assert repeats["Saliency"] == repeats["BaselineDeviation"] == 2
    assert repeats["InputMagnitude"] == repeats["GreyMatterPrior"] == 1
    assert read_json(group / "overlap.json")["Repeats"] == 2
    assert "With 2 repeats of the cross-validation" in (config.output_dir / "group.html").read_text()
    answer = pd.read_csv(group / "answer.tsv", sep="\t")
    for table in (overlap, answer):
        bounded = table.dropna(subset=["ci_low"])
        assert len(bounded) and ((bounded["ci_low"] <= bounded["value"]) & (bounded["value"] <= bounded["ci_high"])).all()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished permutation was trained again")

    monkeypatch.setattr(permutation, "fit_and_test", no_training)
    rerun = config.replace("training", cv="leave-site-out", repeats=2, permutation_test=2, steps=0, epochs=2)
    assert permutation.run_permutation_test(rerun, derivs, cohort)["PValue"] == verdict["PermutationPValue"]
