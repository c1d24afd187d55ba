"""HTML reports: every section renders in headless Chromium, from full outputs and from none."""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest

from adheat_app.baseline import run_svm
from adheat_app.bids import Derivatives
from adheat_app.evaluation import run_evaluation
from adheat_app.report import write_group_report, write_subject_report
from adheat_app.report.html import markdown
from conftest import make_preprocessed_cohort
from test_baseline import round_robin_folds
from test_evaluation import write_synthetic_heatmaps, write_synthetic_predictions

GROUP_SECTIONS = ("answer", "summary", "cv-metrics", "roc", "training", "heatmaps", "svm", "reference", "overlap",
                  "regions", "distances", "sanity", "preproc-qc", "methods")
SUBJECT_SECTIONS = ("summary", "preprocessing", "predictions", "heatmaps")
QC_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
          b'<rect width="40" height="20" fill="red"/></svg>')


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return exe


#: Test-only scripts put into a copy of a report: record any JavaScript or resource error in
#: ``<html data-errors=...>`` (first in ``<head>``), and mark the page rendered with its number of sections
#: (``<body data-rendered=N>``, last in ``<body>``: it runs only when everything before it parsed).
ERROR_HOOK = """<script>
window.addEventListener('error', function (event) {
  var root = document.documentElement;
  root.dataset.errors = (root.dataset.errors ? root.dataset.errors + ' | ' : '') + (event.message || 'resource error');
}, true);
</script>"""
RENDERED_MARK = "<script>document.body.dataset.rendered = String(document.querySelectorAll('section').length);</script>"


def rendered_dom(exe: str, page, profile) -> str:
    """The DOM of a copy of ``page`` with the test scripts, after Chromium loaded it and ran them."""
    text = page.read_text()
    assert "<script" not in text  # reports ship no script
    probe = profile.with_suffix(".html")
    probe.write_text(text.replace("<head>", "<head>" + ERROR_HOOK, 1).replace("</body>", RENDERED_MARK + "</body>",
                                                                              1))
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri()],
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
    group_html = write_group_report(config, derivs, cohort, truth.template)
    subject_html = write_subject_report(config, derivs, "sub-01")
    return config, derivs, cohort, truth, group_html, subject_html


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


@pytest.mark.slow
def test_answer_section_states_findings_and_model_verdict(full_run):
    config, derivs, *_, group_html, _ = full_run
    text = group_html.read_text()
    answer = text.split('<section id="answer">', 1)[1].split("</section>", 1)[0]
    warning = answer.split('id="model-warning"', 1)[1].split("</div>", 1)[0]
    assert f"{config.training.model} is not better than chance</strong> at separating AD from CN (ROC AUC 0.520 " \
           "[0.310, 0.730], p = 0.44)" in warning and "SVM" not in warning
    assert "SVM: better than chance (ROC AUC 0.910 [0.800, 0.990], p = 0.001)" in answer
    found = pd.read_csv(derivs.root / "group" / "answer.tsv", sep="\t")
    found = found[found["sign"] == "absolute"]
    assert answer.count("<tr") == len(found) + 1 and {"IG", "Saliency", "SVM"} <= set(found["method"])
    assert answer.index("simulation") < answer.index("anatomicalprior (region prior, not a meta-analysis)")


@pytest.mark.slow
def test_subject_report_embeds_qc_and_heatmaps(full_run):
    *_, subject_html = full_run
    text = subject_html.read_text()
    assert "data:image/svg+xml;base64," in text and text.count("data:image/png;base64,") == 1
    assert "Not computed" not in text
    assert "IG" in text and "Saliency" in text


@pytest.mark.slow
def test_reports_without_outputs_say_not_computed(full_run, tmp_path):
    config, _, cohort, truth, *_ = full_run
    empty = Derivatives(tmp_path / "empty", config.bids_dir)
    empty.initialize()
    text = write_group_report(config.replace("evaluation", reference_map=str(tmp_path / "missing.nii.gz")), empty,
                              cohort, truth.template).read_text()
    assert text.count("Not computed") == len(GROUP_SECTIONS) - 2  # all but the cohort summary and methods text
    assert "Not computed" in write_subject_report(config, empty, "01").read_text()


@pytest.mark.slow
def test_reports_render_in_headless_chromium(full_run, tmp_path):
    exe = chromium()
    *_, group_html, subject_html = full_run
    dom = rendered_dom(exe, group_html, tmp_path / "profile1")
    check_dom(dom, GROUP_SECTIONS)
    first = dom.index('<section id="answer">')
    assert first < min(dom.index(f'<section id="{s}">') for s in GROUP_SECTIONS[1:])  # the answer comes first
    assert first < dom.index('id="model-warning"') < dom.index('<section id="summary">')
    assert dom.index('id="model-warning"') < dom.index("<table")  # the warning tops the page's content
    check_dom(rendered_dom(exe, subject_html, tmp_path / "profile2"), SUBJECT_SECTIONS)


def test_markdown_renderer():
    html = markdown("# Methods\n\nText with `code` and **bold** [@ref].\n\n- one\n- two\n\n<!-- end -->\n")
    assert "<h3>Methods</h3>" in html and "<code>code</code>" in html and "<strong>bold</strong>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "&lt;" not in html


def test_a_model_reliably_below_chance_is_named_as_a_finding(tmp_path):
    """The model warning names an interval entirely under 0.5 as below chance (confounded folds), not merely as
    'not better than chance'; the joint covariate model reads 'the covariates together separate'."""
    from adheat_app.config import build_config
    from adheat_app.report.group import _answer

    group = tmp_path / "group"
    group.mkdir()
    pd.DataFrame([{"model": "resnet3d", "fold": "pooled", "roc_auc": 0.24, "roc_auc_ci_low": 0.07,
                   "roc_auc_ci_high": 0.45, "p_value": 0.99, "better_than_chance": False, "below_chance": True},
                  {"model": "covariate-all", "fold": "pooled", "roc_auc": 0.9, "roc_auc_ci_low": 0.7,
                   "roc_auc_ci_high": 1.0, "p_value": 0.001, "better_than_chance": True, "below_chance": False}]
                 ).to_csv(group / "cv_metrics.tsv", sep="\t", index=False)
    config = build_config(tmp_path, tmp_path / "out", ("group",), {}, {})
    html = _answer(config, tmp_path)
    warning = html.split('id="model-warning"', 1)[1].split("</div>", 1)[0]
    assert "resnet3d is not better than chance" in warning and "reliably BELOW chance" in warning
    assert "confounded folds" in warning
    assert "the covariates together separate AD from CN" in html.split('id="confound-warning"', 1)[1]
