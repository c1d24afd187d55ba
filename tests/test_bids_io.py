"""BIDS inputs, derivatives naming and sidecars, atomic writes, templates, config and citation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from adheat_app import __version__, io, templates
from adheat_app.bids import (Derivatives, collect_t1w, container_info, is_complete, load_layout,
                             normalize_label, read_participants, sidecar_path)
from adheat_app.citation import render_citation, steps_present
from adheat_app.cli.run import prepare
from adheat_app.errors import InputError
from conftest import write_tiny_bids


@pytest.mark.parametrize("label", ["01", "sub-01", " sub-01 "])
def test_labels_are_stripped(label):
    assert normalize_label(label, "sub") == "01"


@pytest.mark.parametrize("label", ["../01", "0/1", "0 1", "sub-0_1", "", "..", "sub-"])
def test_non_bids_labels_are_refused(label):
    with pytest.raises(InputError, match="invalid sub label"):
        normalize_label(label, "sub")


def test_derivative_names_follow_entity_order(tmp_path):
    d = Derivatives(tmp_path / "out", tmp_path / "bids")
    path = d.subject_path("01", "2", "heatmap", desc="IG", res="2", space="MNI152NLin2009cAsym")
    assert path.relative_to(tmp_path / "out").as_posix() == \
        "sub-01/ses-2/anat/sub-01_ses-2_space-MNI152NLin2009cAsym_res-2_desc-IG_heatmap.nii.gz"
    xfm = d.subject_path("01", None, "xfm", ".h5", from_="T1w", to="MNI152NLin2009cAsym", mode="image")
    assert xfm.name == "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
    group = d.group_path("heatmap", space="S", res="2", label="AD", desc="IG", stat="mean")
    assert group.relative_to(tmp_path / "out").as_posix() == "group/space-S_res-2_label-AD_desc-IG_stat-mean_heatmap.nii.gz"
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        d.filename("T1w", bogus="x")
    assert sidecar_path(path).name == "sub-01_ses-2_space-MNI152NLin2009cAsym_res-2_desc-IG_heatmap.json"


def test_dataset_description_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("ADHEAT_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("ADHEAT_CONTAINER_IMAGE", f"adheat/adheat:{__version__}")
    d = Derivatives(tmp_path / "out", tmp_path / "bids")
    d.initialize()
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "adheat" and desc["GeneratedBy"][0]["Version"] == __version__
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": f"adheat/adheat:{__version__}"}
    assert "_heatmap" in (tmp_path / "out" / ".bidsignore").read_text()
    assert d.source_uri(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz") == \
        "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert d.source_uri(tmp_path / "out" / "sub-01" / "x.nii.gz") == "bids::sub-01/x.nii.gz"
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/adheat.sif")
    monkeypatch.delenv("ADHEAT_CONTAINER_IMAGE")
    assert container_info() == {"Type": "singularity", "Tag": "/images/adheat.sif"}


def test_write_image_with_sidecar_and_completion(tmp_path):
    d = Derivatives(tmp_path / "out", tmp_path / "bids")
    path = d.subject_path("01", None, "T1w", desc="preproc")
    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    assert not is_complete(path, InputHash="abc")
    d.write_image(path, img, {"InputHash": "abc", "Sources": ["bids:raw:x"]})
    assert np.array_equal(nib.load(path).get_fdata(), img.get_fdata())
    assert is_complete(path, InputHash="abc")
    assert not is_complete(path, InputHash="changed")


def _failing_save(img, filename):
    with open(filename, "wb") as fh:
        fh.write(b"\x1f\x8b half a file")
    raise OSError("disk full")


def test_atomic_write_leaves_nothing_after_a_crash(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "x_T1w.nii.gz"
    monkeypatch.setattr(io.nib, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_nifti(target, nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)))
    assert list(target.parent.iterdir()) == []


def test_atomic_write_keeps_the_old_file_after_a_crash(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    io.write_json(target, {"a": 1})
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        io.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_collect_sessions_runs_and_participants(tmp_path, caplog):
    root = write_tiny_bids(tmp_path / "bids", {"01": "AD", "02": "CN"}, sessions=("1", "2"), shape=(4, 4, 4))
    extra = root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_run-2_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), extra)
    (root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz").rename(extra.with_name("sub-01_ses-1_run-1_T1w.nii.gz"))
    layout = load_layout(root, tmp_path / "work")
    with caplog.at_level(logging.WARNING):
        inputs = collect_t1w(layout, session_labels=("ses-1",))
    assert [(t.subject, t.session, t.path.name) for t in inputs] == [
        ("01", "1", "sub-01_ses-1_run-1_T1w.nii.gz"), ("02", "1", "sub-02_ses-1_T1w.nii.gz")]
    assert "2 T1w runs" in caplog.text
    assert inputs[0].key == "sub-01_ses-1"
    table = read_participants(root, "diagnosis")
    assert table.loc["02", "diagnosis"] == "CN"
    with pytest.raises(InputError, match="has no column 'dx'"):
        read_participants(root, "dx")


def test_layout_index_is_cached_until_the_dataset_changes(tmp_path):
    root = write_tiny_bids(tmp_path / "bids", {"01": "AD"}, shape=(4, 4, 4))
    work = tmp_path / "work"
    load_layout(root, work)
    [index] = (work / "pybids_db").glob("*/layout_index.sqlite")
    stamp = index.stat().st_mtime_ns
    assert len(load_layout(root, work).get_subjects()) == 1
    assert index.stat().st_mtime_ns == stamp  # reused, not rebuilt
    write_tiny_bids(root, {"01": "AD", "02": "CN"}, shape=(4, 4, 4))
    assert load_layout(root, work).get_subjects() == ["01", "02"]
    assert [p.parent for p in (work / "pybids_db").glob("*/layout_index.sqlite")] != [index.parent]  # replaced
    assert not index.exists()


def test_templateflow_template_offline(tf_home, no_network):
    templates.get_template.cache_clear()
    tpl = templates.get_template(2.0)
    assert (tpl.space, tpl.source) == ("MNI152NLin2009cAsym", "templateflow")
    assert tpl.shape == (97, 115, 97)  # TemplateFlow's res-02 grid
    assert np.allclose(tpl.affine[:3, 3], [-96, -132, -78]) and np.allclose(np.diag(tpl.affine)[:3], 2)
    assert tpl.res_label == "2" and tpl.t1w.get_fdata()[~tpl.mask_array()].max() == 0
    atlas = templates.get_atlas(2.0)
    assert {"Hippocampus_L", "Hippocampus_R", "Temporal_Mid_L"} <= set(atlas.labels.values())
    hippo = atlas.region_mask(["Hippocampus"])
    assert 500 < hippo.sum() < 3000  # ~7 cm3 per side at 8 mm3 voxels
    assert hippo[: tpl.shape[0] // 2].any() and hippo[tpl.shape[0] // 2:].any()


FALLBACK_SCRIPT = """
import logging, socket
def refuse(*a, **k):
    raise OSError("network disabled")
socket.socket.connect = refuse
socket.create_connection = refuse
logging.basicConfig(level=logging.WARNING)
from adheat_app import templates
tpl = templates.get_template(4.0)
gm = tpl.gm.get_fdata()
print(tpl.space, tpl.source, gm.min() >= 0, gm.max() <= 1, tpl.mask_array().sum() > 0)
templates.get_template(6.0)  # another grid, and the space the fallback gave (as the group level asks): no new notice
templates.get_template(4.0, space=tpl.space)
try:
    templates.get_template(6.0, allow_fallback=False)
except RuntimeError as exc:
    print("refused:", str(exc)[:40])
"""


def test_fallback_template_is_labelled_honestly(tmp_path):
    """TemplateFlow reads its home at import, so this runs in a fresh process with an empty home.

    The notice appears once per process, in one line without TemplateFlow's URLs and HTTP errors.
    """
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tmp_path / "empty_tf")}
    out = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "MNI152NLin2009aSym nilearn True True True"
    assert "refused: TemplateFlow could not provide MNI152NLi" in out.stdout
    assert "using nilearn's bundled MNI152NLin2009aSym" in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no network to download it" in lines[0], out.stderr
    assert "http" not in out.stderr.lower() and "Downloading" not in out.stderr


@pytest.mark.parametrize(("res", "label"), [(2.0, "2"), (1.5, "1p5"), (1, "1")])
def test_resolution_labels(res, label):
    assert templates.format_resolution(res) == label
    assert templates.parse_resolution(label) == float(res)


def test_citation_names_the_steps_present(tiny_bids, tmp_path):
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "group", "--skip-bids-validation"])
    text, bib = render_citation(config, {"always", "preprocessing"})
    assert "N4" in text and "deepbet" in text and "Heatmaps" not in text and "${" not in text
    assert "@article{tustison2010n4," in bib and "sundararajan2017axiomatic" not in bib
    full, full_bib = render_citation(config, {"always", "preprocessing", "training", "heatmaps", "evaluation"})
    own = full[full.index("adheat's own implementations") - 700:full.index("call Captum")]
    assert all(name in own for name in ("Integrated Gradients", "layer-wise relevance", "occlusion", "Grad-CAM"))
    assert "the positive class (AD) for every scan" in full and "difference of the two logits" in full
    assert "The network read the preprocessed T1w images." in full
    assert "subject-level" not in full  # no group/subject_overlap.tsv: no sentence on it
    both, _ = render_citation(config, {"always", "training"}, ("intensity", "logjacobian"))
    assert "two channels: the preprocessed T1w image and the log Jacobian determinant" in both
    assert "5-fold cross-validation stratified by diagnosis" in full and "bootstrap interval over subjects" in full
    assert "covariate (age, sex, site) alone and on all together" in full and "likelihood-ratio" in full
    assert "ojala2010permutation" not in full
    yardsticks = config.replace("training", cv="leave-site-out", repeats=3, permutation_test=50)
    text, bib = render_citation(yardsticks, {"always", "training"})
    assert "leave-site-out cross-validation" in text and "repeated 3 times with new fold splits" in text
    assert "each also drawing one repeat" in text and "50 permutations of the diagnoses (within each site)" in text
    assert "@article{ojala2010permutation," in bib
    cited = set(__import__("re").findall(r"@([A-Za-z0-9_:-]+)", full))
    assert cited and all(f"{{{key}," in full_bib for key in cited)
    d = Derivatives(tmp_path / "out", tiny_bids)
    assert steps_present(d, "rieke2018") == {"always"}


@pytest.mark.parametrize("source", ["nilearn", "templateflow"])
def test_methods_text_names_the_template_and_options_the_scans_were_made_with(source, tiny_bids, tmp_path,
                                                                              request, monkeypatch):
    """The space entity and the sidecar's template record decide the text, not the configuration."""
    import requests

    from adheat_app.citation import dataset_citation
    from adheat_app.layout import preproc_paths

    if source == "templateflow":
        request.getfixturevalue("tf_home")
    else:  # TemplateFlow offline with an empty home: the fallback get_template chooses
        def offline(space):
            raise requests.exceptions.ConnectionError("no network")
        monkeypatch.setattr(templates, "_load_templateflow", offline)
    templates.get_template.cache_clear()
    record = templates.get_template(4.0).describe()
    templates.get_template.cache_clear()
    assert record["TemplateSource"] == source
    config = prepare([str(tiny_bids), str(tmp_path / "out"), "group", "--skip-bids-validation"])
    assert config.preprocessing.registration == "syn"
    derivs = Derivatives(config.output_dir, tiny_bids)
    derivs.initialize()
    scan = collect_t1w(load_layout(tiny_bids, tmp_path / "work"))[0]
    image, _ = preproc_paths(derivs.root, scan, record["Space"], "4")
    derivs.write_image(image, nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)),
                       {"Template": record, "RegistrationMethod": "affine", "IntensityNormalization": "zscore",
                        "Software": {"antspyx": "0.0.1-recorded"}})
    text, bib = dataset_citation(config, derivs)
    methods = " ".join(text.split())
    assert "rigid and affine registration in ANTs (antspyx 0.0.1-recorded;" in methods  # what ran, not the config
    assert "z-scored within the brain mask" in methods
    if source == "nilearn":
        assert "the ICBM 2009a nonlinear symmetric template" in methods and "`MNI152NLin2009aSym`" in methods
        assert "the copy distributed with Nilearn" in methods and "could not provide MNI152NLin2009cAsym" in methods
        assert "2009c nonlinear" not in methods and "through TemplateFlow" not in methods
        assert "abraham2014nilearn" in bib and "ciric2022templateflow" not in bib
    else:
        assert "the ICBM 2009c nonlinear asymmetric template" in methods and "`MNI152NLin2009cAsym`" in methods
        assert "obtained through TemplateFlow" in methods and "Nilearn" not in methods.split("Intensities")[0]
        assert "ciric2022templateflow" in bib


def test_atomic_outputs_follow_the_umask(tmp_path):
    """Outputs must be readable by other users (containers run under another UID), not mkstemp's 0600."""
    path = io.write_json(tmp_path / "x.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~io._UMASK


def test_stale_partials_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """A SIGKILLed writer leaves its temporary file; the next run removes it, never a live writer's."""
    import time

    from adheat_app.io import STALE_PARTIAL_HOURS, _HOST, remove_stale_partials

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    folder = tmp_path / "sub-01" / "anat"
    folder.mkdir(parents=True)
    names = {"dead": f".x_T1w.nii.gz.partial-{_HOST}-{dead_pid}-ab12_c.tmp.nii.gz",
             "live": f".x_T1w.nii.gz.partial-{_HOST}-{os.getpid()}-zz99.tmp.nii.gz",
             "remote": ".x_T1w.nii.gz.partial-node-17.cluster-4242-q1w2.tmp.nii.gz",
             "remote_old": ".y.tsv.partial-node-17.cluster-4242-e3r4.tmp.tsv",
             "output": "sub-01_T1w.nii.gz"}
    for name in names.values():
        (folder / name).write_bytes(b"half")
    old = time.time() - (STALE_PARTIAL_HOURS + 1) * 3600
    os.utime(folder / names["remote_old"], (old, old))
    removed = remove_stale_partials(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["remote_old"]])
    assert sorted(p.name for p in folder.iterdir()) == sorted([names["live"], names["remote"], names["output"]])
    with io.atomic_path(folder / "z.nii.gz") as partial:  # what atomic_path names its temporary file
        assert remove_stale_partials(tmp_path) == [] and partial.name.startswith(f".z.nii.gz.partial-{_HOST}-")
        partial.write_bytes(b"x")
    assert (folder / "z.nii.gz").read_bytes() == b"x"
