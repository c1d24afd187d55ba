"""HTML reports: every section renders in headless Chromium, from full outputs and from none; the answer first."""

from __future__ import annotations

import re
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app.baseline import run_svm
from adheat_app.bids import Derivatives
from adheat_app.evaluation import run_evaluation
from adheat_app.layout import logjacobian_path
from adheat_app.report import write_group_report, write_subject_report, write_subject_reports
from adheat_app.report.answer import read_findings
from adheat_app.report.html import markdown
from conftest import make_preprocessed_cohort
from test_baseline import round_robin_folds
from test_evaluation import write_synthetic_heatmaps, write_synthetic_predictions
from test_viewer import CHROMIUM_FLAGS, ERROR_HOOK, chromium, viewer_root, without_viewer

GROUP_SECTIONS = ("answer", "viewer", "summary", "cv-metrics", "roc", "training", "heatmaps", "svm", "reference",
                  "overlap", "regions", "distances", "sanity", "preproc-qc", "methods")
SUBJECT_SECTIONS = ("summary", "viewer", "preprocessing", "predictions", "heatmaps")
#: Height budget of group.html with every <details> closed, at 1,400 px wide: about three screens of 900 px, plus
#: the interactive viewer (a 520 px canvas and its controls).
GROUP_PAGE_MAX_HEIGHT = 3 * 900 + 700
QC_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
          b'<rect width="40" height="20" fill="red"/></svg>')


#: Test-only script put last into ``<body>``: marks the page rendered with its number of sections
#: (``<body data-rendered=N>``; it runs only when everything before it parsed).
RENDERED_MARK = "<script>document.body.dataset.rendered = String(document.querySelectorAll('section').length);</script>"
#: Test-only script: once every image has loaded, the page's height in CSS pixels (``<body data-height=...>``).
HEIGHT_MARK = ("<script>window.addEventListener('load', function () {"
               "document.body.dataset.height = String(document.documentElement.scrollHeight); });</script>")


def rendered_dom(exe: str, page, profile) -> str:
    """The DOM of a copy of ``page`` with the test scripts, after Chromium loaded it (1,400 px wide) and ran them."""
    text = page.read_text()
    assert "<script" not in without_viewer(text)  # the viewer's are the only scripts
    probe = profile.with_suffix(".html")
    end = text.rindex("</body>")  # the last one: the viewer's NiiVue bundle holds the string too
    probe.write_text(text[:end].replace("<head>", "<head>" + ERROR_HOOK, 1) + RENDERED_MARK + HEIGHT_MARK
                     + text[end:])
    flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--window-size=")]
    proc = subprocess.run(
        [exe, *flags, "--window-size=1400,900", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def check_dom(dom: str, sections: tuple[str, ...]) -> None:
    for section in sections:
        assert f'<section id="{section}">' in dom, section
    assert f'data-rendered="{len(sections)}"' in dom  # the test's script at the end of the page ran
    assert "data-errors" not in dom, re.search(r'data-errors="[^"]*"', dom).group(0)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """SVM, synthetic CNN predictions and heatmaps, QC inputs, evaluation, then both reports."""
    root = tmp_path_factory.mktemp("report")
    config, derivs, cohort, truth = make_preprocessed_cohort(root, n_subjects=8, resolution=4.0, seed=4,
                                                             effect_size=0.4, evaluation__n_bootstrap=50,
                                                             evaluation__n_permutations=100)
    write_synthetic_predictions(derivs, cohort, config.training.model)
    run_svm(config, derivs, cohort, round_robin_folds(cohort.labelled, 2))
    metrics_path = derivs.root / "group" / "cv_metrics.tsv"
    metrics = pd.read_csv(metrics_path, sep="\t", dtype={"fold": str})
    pooled = pd.DataFrame([{"model": config.training.model, "fold": "pooled", "roc_auc": 0.52, "roc_auc_ci_low": 0.31,
                            "roc_auc_ci_high": 0.73, "p_value": 0.44, "better_than_chance": False},
                           {"model": "SVM", "fold": "pooled", "roc_auc": 0.91, "roc_auc_ci_low": 0.8,
                            "roc_auc_ci_high": 0.99, "p_value": 0.001, "better_than_chance": True}])
    metrics = metrics[metrics["fold"] != "pooled"]  # replaced by verdicts of known values
    pd.concat([metrics, pooled], ignore_index=True).to_csv(metrics_path, sep="\t", index=False)
    write_synthetic_heatmaps(derivs, cohort, truth)
    group = derivs.root / "group"
    pd.DataFrame({"subject": [s.subject for s in cohort.scans], "session": "n/a", "ncc": 0.9,
                  "outlier": 0}).to_csv(group / "preproc_qc.tsv", sep="\t", index=False)
    pd.DataFrame({"method": ["IG"], "layer": ["last_conv"], "spearman": [0.1]}).to_csv(
        group / "sanity_check.tsv", sep="\t", index=False)
    (derivs.root / "sub-01" / "figures").mkdir(parents=True, exist_ok=True)
    (derivs.root / "sub-01" / "figures" / "sub-01_desc-reg_T1w.svg").write_bytes(QC_SVG)
    run_evaluation(config, derivs, cohort, truth.template)
    scan = next(s for s in cohort.scans if s.subject == "01")
    logjacobian = np.where(truth.template.mask_array(), -truth.probseg, 0).astype(np.float32)
    derivs.write_image(logjacobian_path(derivs.root, scan, cohort.space, cohort.res_label),
                       nib.Nifti1Image(logjacobian, truth.template.affine), {"Description": "synthetic"})
    group_html = write_group_report(config, derivs, cohort, truth.template)
    subject_html = write_subject_report(config, derivs, "sub-01")
    return config, derivs, cohort, truth, group_html, subject_html


@pytest.mark.slow
def test_subject_reports_in_two_processes_are_the_pages_written_one_by_one(full_run, caplog):
    config, derivs, cohort, *_ = full_run
    subjects = ["02", "03", "01"]
    serial = {path.name: path.read_bytes() for path in write_subject_reports(config, derivs, subjects)}
    caplog.clear()  # the serial run's records are captured too when an earlier test left the level at INFO
    with caplog.at_level("INFO", logger="adheat_app.report.subject"):
        paths = write_subject_reports(config.replace("execution", nprocs=2), derivs, subjects)
    assert [p.name for p in paths] == ["sub-01.html", "sub-02.html", "sub-03.html"]  # subject order
    assert {path.name: path.read_bytes() for path in paths} == serial
    assert sum("wrote" in r.getMessage() for r in caplog.records) == 3  # the parent logs each page


@pytest.mark.slow
def test_group_report_has_every_section_with_content(full_run):
    *_, group_html, _ = full_run
    text = group_html.read_text()
    assert 'src="http' not in text and "<link" not in text  # self-contained
    assert text.count("data:image/png;base64,") >= 10
    for section in GROUP_SECTIONS:
        body = text.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        if section == "training":
            assert "Not computed" in body  # no CNN was trained here
        else:
            assert "Not computed" not in body, section
    assert "SVM" in text and "simulation" in text and "Evaluation" in text
    overlap, methods = (text.split(f'<section id="{name}">', 1)[1].split("</section>", 1)[0]
                        for name in ("overlap", "methods"))
    assert "Subject-level scores: each subject" in overlap and 'href="group/subject_overlap.tsv"' in overlap
    assert "own out-of-fold heatmap" in methods  # the methods text's sentence on them


def section(text: str, name: str) -> str:
    return text.split(f'<section id="{name}">', 1)[1].split("</section>", 1)[0]


@pytest.mark.slow
def test_answer_is_one_sentence_per_question_and_one_figure(full_run):
    config, derivs, *_, group_html, _ = full_run
    answer = section(group_html.read_text(), "answer")
    sentences = answer.split('<ul id="answers">', 1)[1].split("</ul>", 1)[0]
    questions = re.findall(r"<strong>([^<]+\?)</strong>", sentences)
    assert questions == ["Did the CNN learn?", "Could a confound explain it?", "Which methods find which reference?"]
    warning = sentences.split('id="model-warning"', 1)[1].split("</li>", 1)[0]
    assert f"{config.training.model} is not better than chance at separating AD from CN: pooled out-of-fold ROC AUC " \
           "0.520 [0.310, 0.730] against chance 0.5 (p = 0.44); its heatmaps say nothing" in warning
    assert "The linear SVM on the same folds: better than chance (ROC AUC 0.910 [0.800, 0.990], p = 0.001)" in warning
    assert "Not assessed: no covariate-only classifier" in sentences  # the fixture has no covariate rows
    findings = sentences.split("Which methods find which reference?", 1)[1]
    assert findings.index("<em>simulation</em>") < findings.index("<em>anatomicalprior (a region prior")
    assert "the strongest applicable control" in findings and "its maps are not counted" in findings  # answer.tsv names it
    assert findings.count("<em>") == len(read_findings(derivs.root).references)
    figure = answer.split('<figure id="answer-figure">', 1)[1].split("</figure>", 1)[0]
    assert figure.count("data:image/png;base64,") == 1 and "Ordered by ROC AUC against simulation" in figure
    rows = answer.split("<details>", 1)[1].split("</details>", 1)[0]  # every row of answer.tsv, collapsed
    assert rows.count("<tr") == len(pd.read_csv(derivs.root / "group" / "answer.tsv", sep="\t")) + 1
    assert 'href="group/answer.tsv"' in rows


def test_answer_reads_the_control_and_primary_columns_when_present(tmp_path):
    """answer.tsv may name the strongest control, mark primary rows and give Holm-corrected p-values."""
    from adheat_app.config import build_config
    from adheat_app.report.answer import answer_sentences

    base = {"metric": "roc_auc", "ci_low": 0.6, "ci_high": 0.9, "sign": "absolute"}
    rows = [{"method": "IG", "reference": "simulation", "value": 0.8, "finds_reference": True,
             "control": "GreyMatterPrior", "primary": True, "p_holm": 0.01},
            {"method": "Saliency", "reference": "simulation", "value": 0.7, "finds_reference": False,
             "control": "GreyMatterPrior", "primary": True, "p_holm": 0.2},
            {"method": "IGintensity", "reference": "simulation", "value": 0.9, "finds_reference": True,
             "control": "GreyMatterPrior", "primary": False, "p_holm": float("nan")}]
    group = tmp_path / "group"
    group.mkdir()
    pd.DataFrame([{**base, **row} for row in rows]).to_csv(group / "answer.tsv", sep="\t", index=False)
    findings = read_findings(tmp_path)
    assert findings.primary_only and findings.holm and list(findings.rows["method"]) == ["IG", "Saliency"]
    config = build_config(tmp_path / "bids", tmp_path / "out", ("group",), {}, {})
    text = answer_sentences(config, tmp_path, findings)
    assert "<em>simulation</em>: found by IG (0.800 [0.600, 0.900]); not by Saliency" in text
    assert "the strongest applicable control (GreyMatterPrior)" in text
    assert "Primary comparisons only, Holm-corrected" in text and "IGintensity" not in text
    assert "Are the maps faithful?" not in text
    today = pd.DataFrame([{**base, **row} for row in rows]).drop(columns=["control", "primary", "p_holm"])
    today.to_csv(group / "answer.tsv", sep="\t", index=False)  # the columns of today's table
    findings = read_findings(tmp_path)
    assert not findings.primary_only and list(findings.rows["method"]) == ["IG", "Saliency"]  # no channel part
    text = answer_sentences(config, tmp_path, findings)
    assert "the InputMagnitude control" in text and "Primary" not in text


def test_faithfulness_is_answered_and_shown_only_when_its_tables_exist(tmp_path):
    from adheat_app.config import build_config
    from adheat_app.evaluation.faithfulness import CURVE_COLUMNS
    from adheat_app.io import write_table
    from adheat_app.layout import FAITHFULNESS_CURVES, faithfulness_figure, group_table
    from adheat_app.plotting import data_uri, save_png
    from adheat_app.report.answer import answer_sentences
    from adheat_app.report.group import _faithfulness

    group = tmp_path / "group"
    group.mkdir()
    config = build_config(tmp_path / "bids", tmp_path / "out", ("group",), {}, {})
    assert "faithful" not in answer_sentences(config, tmp_path, None) and _faithfulness(tmp_path) == ""
    pd.DataFrame({"method": ["IG", "IG", "Saliency"], "aopc": [0.3, 0.2, 0.01],
                  "faithful": [True, True, False]}).to_csv(group / "faithfulness.tsv", sep="\t", index=False)
    pd.DataFrame({"channel": ["intensity", "logjacobian"], "drop": [0.01, 0.4]}).to_csv(
        group / "channel_ablation.tsv", sep="\t", index=False)
    shown = _faithfulness(tmp_path)
    assert shown.count("<details>") == 2 and 'href="group/channel_ablation.tsv"' in shown and "<img" not in shown
    curves = pd.DataFrame([
        {"method": method, "kind": "control" if method.endswith("Random") else "method", "units": units,
         "order": order, "direction": direction, "step": step, "removed": step / 10, "output": 2.0 - step / 10,
         "ci_low": 1.8 - step / 10, "ci_high": 2.2 - step / 10, "n_subjects": 6}
        for method in ("IG", "IGRandom") for units in ("regions", "blocks") for order in ("morf", "lerf", "random")
        for direction in ("deletion", "insertion") for step in range(11)], columns=CURVE_COLUMNS)
    write_table(group_table(tmp_path, FAITHFULNESS_CURVES), curves, {"Fill": "noisy-linear"})
    text = answer_sentences(config, tmp_path, None)
    assert "<strong>Are the maps faithful?</strong> faithful in group/faithfulness.tsv: IG; not: Saliency; " \
           "group/channel_ablation.tsv: 2 rows (below)." in text  # the curves are no table of the answer
    shown = _faithfulness(tmp_path)
    assert shown.count("<details>") == 3 and 'href="group/faithfulness_curves.tsv"' in shown
    assert "Deletion and insertion curves (fill: noisy-linear; 2 maps)" in shown
    assert shown.count("<img") == 1 and 'alt="Deletion (top) and insertion (bottom) curves' in shown
    save_png(b"\x89PNG written by the faithfulness step", faithfulness_figure(tmp_path))
    assert data_uri(b"\x89PNG written by the faithfulness step") in _faithfulness(tmp_path)  # the file, not redrawn


def test_subject_level_scores_are_shown_only_when_their_table_exists(tmp_path):
    """The subject-level table (simulated cohorts) adds one collapsed block below the overlap scores; none without."""
    from adheat_app.evaluation.subject_scores import SUBJECT_COLUMNS
    from adheat_app.report.group import _subject_overlap

    assert _subject_overlap(tmp_path) == ""
    rows = [{"method": method, "kind": kind, "label": label, "reference": "simulation", "sign": "absolute",
             "metric": "roc_auc", "top_percent": None, "value": value, "subject_mean": value, "chance": 0.5,
             "ci_low": value - 0.05, "ci_high": value + 0.05, "control": "GreyMatterPrior" if kind == "method" else "",
             "vs_control": value - 0.7 if kind == "method" else None, "vs_control_ci_low": 0.1,
             "vs_control_ci_high": 0.2, "p_control": 0.01, "n_subjects": n, "n_bootstrap": 100}
            for label, n in (("AD", 6), ("MCI", 3))
            for method, kind, value in (("IG", "method", 0.9), ("GreyMatterPrior", "control", 0.7))]
    (tmp_path / "group").mkdir()
    pd.DataFrame(rows, columns=SUBJECT_COLUMNS).to_csv(tmp_path / "group" / "subject_overlap.tsv", sep="\t",
                                                       index=False, na_rep="n/a")
    shown = _subject_overlap(tmp_path)
    assert shown.count("<details>") == 1 and 'href="group/subject_overlap.tsv"' in shown
    assert "(subjects: AD 6, MCI 3)" in shown and "label: MCI" in shown
    assert "0.900 [0.850, 0.950]" in shown and "0.200 [0.100, 0.200]" in shown


@pytest.mark.slow
def test_subject_report_embeds_qc_and_heatmaps(full_run):
    *_, subject_html = full_run
    text = subject_html.read_text()
    assert "data:image/svg+xml;base64," in text and without_viewer(text).count("data:image/png;base64,") == 1
    assert "Not computed" not in text
    heatmaps = section(text, "heatmaps")
    assert "First row: the log Jacobian determinant" in heatmaps and "IG" in heatmaps and "Saliency" in heatmaps


@pytest.mark.slow
def test_reports_without_outputs_say_not_computed(full_run, tmp_path):
    config, _, cohort, truth, *_ = full_run
    empty = Derivatives(tmp_path / "empty", config.bids_dir)
    empty.initialize()
    text = write_group_report(config.replace("evaluation", reference_map=str(tmp_path / "missing.nii.gz")), empty,
                              cohort, truth.template).read_text()
    # all but the answer (whose questions are "Not assessed"), the cohort summary and the methods text
    assert text.count("Not computed") == len(GROUP_SECTIONS) - 3
    assert section(text, "answer").count("Not assessed") == 3
    assert "Not computed" in write_subject_report(config, empty, "01").read_text()


@pytest.mark.slow
def test_reports_render_in_headless_chromium(full_run, tmp_path):
    exe = chromium()
    *_, group_html, subject_html = full_run
    dom = rendered_dom(exe, group_html, tmp_path / "profile1")
    check_dom(dom, GROUP_SECTIONS)
    first = dom.index('<section id="answer">')
    assert first < min(dom.index(f'<section id="{s}">') for s in GROUP_SECTIONS[1:])  # the answer comes first
    assert first < dom.index('id="model-warning"') < dom.index('id="answer-figure"') < dom.index("<details")
    assert dom.index('id="answer-figure"') < dom.index("<table") < dom.index('<section id="summary">')
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    assert 1000 < height <= GROUP_PAGE_MAX_HEIGHT, height  # every <details> closed
    assert viewer_root(dom)["state"] == "ready"
    dom = rendered_dom(exe, subject_html, tmp_path / "profile2")
    check_dom(dom, SUBJECT_SECTIONS)
    assert viewer_root(dom)["state"] == "ready" and viewer_root(dom)["errors"] == ""


def test_markdown_renderer():
    html = markdown("# Methods\n\nText with `code` and **bold** [@ref].\n\n- one\n- two\n\n<!-- end -->\n")
    assert "<h3>Methods</h3>" in html and "<code>code</code>" in html and "<strong>bold</strong>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "&lt;" not in html


@pytest.mark.parametrize("validated", [True, False])
def test_training_curve_legend_lists_only_what_was_measured(validated, monkeypatch):
    from adheat_app import plotting

    monkeypatch.setattr(plotting, "figure_png", lambda fig: fig)  # keep the figure to read its legend
    curve = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.7, 0.6],
                          "val_loss": [0.8, 0.75, 0.7] if validated else [np.nan] * 3,
                          "val_accuracy": [0.5, 0.6, 0.7] if validated else [np.nan] * 3})
    fig = plotting.training_curve(curve, 3, "fold 0")
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    expected = ["training loss", "validation loss", "best epoch (3)", "validation accuracy"] if validated else \
        ["training loss", "best epoch (3)"]
    assert labels == expected and len(fig.axes) == (2 if validated else 1)


def test_top_percent_grid_thresholds_at_the_scoring_top_k():
    from adheat_app import plotting

    values = np.arange(1000, dtype=np.float32)
    assert plotting.top_threshold(values, 5.0) == 950.0  # the 50 largest of 1,000
    assert plotting.top_threshold(np.ones(10, np.float32), 10.0) == 1.0  # ties included
    brain = np.zeros((10, 10, 10), bool)
    brain[1:9, 1:9, 1:9] = True
    reference = np.zeros_like(brain)
    reference[2:5, 2:5, 2:5] = True
    rng = np.random.default_rng(0)
    maps = {"A": rng.random(brain.shape).astype(np.float32) * brain, "B": reference * 1.0}
    png = plotting.top_percent_grid(maps, brain, brain * 1.0, [("truth", reference)], 5.0, [3])
    assert png.startswith(b"\x89PNG")


def test_a_model_reliably_below_chance_is_named_as_a_finding(tmp_path):
    """The model warning names an interval entirely under 0.5 as below chance (confounded folds), not merely as
    'not better than chance'; the joint covariate model reads 'the covariates together separate'."""
    from adheat_app.config import build_config
    from adheat_app.report.answer import _confound, _learned
    from adheat_app.report.tables import model_verdicts

    group = tmp_path / "group"
    group.mkdir()
    pd.DataFrame([{"model": "resnet3d", "fold": "pooled", "roc_auc": 0.24, "roc_auc_ci_low": 0.07,
                   "roc_auc_ci_high": 0.45, "p_value": 0.99, "better_than_chance": False, "below_chance": True},
                  {"model": "covariate-all", "fold": "pooled", "roc_auc": 0.9, "roc_auc_ci_low": 0.7,
                   "roc_auc_ci_high": 1.0, "p_value": 0.001, "better_than_chance": True, "below_chance": False}]
                 ).to_csv(group / "cv_metrics.tsv", sep="\t", index=False)
    config = build_config(tmp_path, tmp_path / "out", ("group",), {}, {})
    verdicts = model_verdicts(tmp_path)
    learned = _learned(config, verdicts)
    assert "model-warning" in learned and "resnet3d is not better than chance" in learned
    assert "reliably BELOW chance" in learned and "confounded folds" in learned
    confound = _confound(config, verdicts)
    assert "confound-warning" in confound and "the covariates together separate AD from CN" in confound
