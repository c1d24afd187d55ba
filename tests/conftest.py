"""Shared test fixtures: offline templates, real data location, tiny BIDS datasets.

Every test session runs offline. When the shared real data (``../shared/data``
beside the repository) is present, a TemplateFlow home is built from its copy of
the 2009c template and ``TEMPLATEFLOW_HOME`` points at it for the whole session,
so the real TemplateFlow code path is exercised; otherwise ``get_template``
falls back to nilearn's bundled template, as it does for users.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEMPLATE_FILES = {
    "tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz": "MNI152NLin2009cAsym_AFNI_T1w_brain_1mm.nii.gz",
    "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz": "MNI152NLin2009cAsym_AFNI_brainmask_1mm.nii.gz",
}


def shared_data_or_skip() -> Path:
    """The shared real data folder, or skip the test saying why."""
    if not (SHARED_DATA / "templates").is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (it sits beside the repository in CI)")
    return SHARED_DATA


def build_templateflow_home(folder: Path) -> Path:
    """Lay out the shared 2009c template as TemplateFlow names it (the container's offline cache)."""
    tpl = folder / "tpl-MNI152NLin2009cAsym"
    tpl.mkdir(parents=True, exist_ok=True)
    for name, source in TEMPLATE_FILES.items():
        shutil.copyfile(SHARED_DATA / "templates" / source, tpl / name)
    return folder


def _clear_template_caches() -> None:
    from adheat_app import templates

    templates.get_template.cache_clear()
    templates.get_atlas.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _offline_templateflow(tmp_path_factory):
    """Point TemplateFlow at an offline home for the whole session."""
    home = tmp_path_factory.mktemp("templateflow")
    if (SHARED_DATA / "templates").is_dir():
        build_templateflow_home(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPLATEFLOW_HOME", str(home))
        mp.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
        _clear_template_caches()
        yield home
    _clear_template_caches()


@pytest.fixture(scope="session")
def tf_home(_offline_templateflow) -> Path:
    """The TemplateFlow home holding the real 2009c template (skips where the shared data is absent)."""
    shared_data_or_skip()
    return _offline_templateflow


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a network connection fail at once."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_tiny_bids(root: Path, subjects: dict[str, str], sessions: tuple[str, ...] = (),
                    shape=(20, 24, 20)) -> Path:
    """A minimal valid BIDS dataset with random T1w images and a diagnosis column.

    Parameters
    ----------
    subjects : dict
        Subject label -> diagnosis.
    sessions : tuple of str
        Session labels (none: no session level).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"}))
    (root / "README").write_text("A tiny dataset for tests.\n")
    rows = ["participant_id\tdiagnosis"] + [f"sub-{s}\t{d}" for s, d in subjects.items()]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    for sub in subjects:
        for ses in sessions or (None,):
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_T1w.nii.gz"
            img = nib.Nifti1Image(rng.random(shape, dtype=np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
            img.set_qform(img.affine, code=1)
            nib.save(img, folder / name)
            (folder / name.replace(".nii.gz", ".json")).write_text(json.dumps({"MagneticFieldStrength": 3}))
    return root


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove a folder was not touched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_bids(tmp_path) -> Path:
    """Two subjects (AD, CN), no sessions."""
    return write_tiny_bids(tmp_path / "bids", {"01": "AD", "02": "CN"})


def pytest_report_header(config):
    return [f"shared real data: {SHARED_DATA if SHARED_DATA.is_dir() else 'absent (real-data tests skip)'}",
            f"TEMPLATEFLOW_HOME (before session fixture): {os.environ.get('TEMPLATEFLOW_HOME', 'unset')}"]


#: Test modules whose module-scoped fixture runs a cohort through the product. Under pytest-xdist their tests go to
#: one worker, so the fixture is built once instead of once per worker (the end-to-end cohort alone takes 6-8
#: minutes on 2 cores). xdist's own ``--dist loadgroup`` cannot do this under pytest 9: it renames node ids
#: through an attribute pytest 9 no longer reads.
SHARED_FIXTURE_MODULES = frozenset({"tests/test_end_to_end.py", "tests/test_report.py", "tests/test_evaluation.py",
                                    "tests/test_attribution.py", "tests/test_training.py", "tests/test_preprocess.py"})

try:
    from xdist.scheduler import LoadGroupScheduling
except ImportError:  # plain pytest: every test runs in this process anyway
    LoadGroupScheduling = None

if LoadGroupScheduling is not None:
    class _SharedFixtureScheduling(LoadGroupScheduling):
        """xdist's load scheduling, but every test of a :data:`SHARED_FIXTURE_MODULES` module goes to one worker."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_FIXTURE_MODULES else nodeid

    def pytest_xdist_make_scheduler(config, log):
        return _SharedFixtureScheduling(config, log)


#: The planted set the training, heatmap and evaluation tests were calibrated on.
CALIBRATED_REGIONS = ("Hippocampus", "Amygdala", "ParaHippocampal", "Temporal_Inf")


def make_preprocessed_cohort(root: Path, n_subjects: int = 12, resolution: float = 4.0, seed: int = 0,
                             effect_size: float = 0.3, null: bool = False, sessions: int = 1, n_mci: int = 0,
                             atrophy_model: str = "darkening", sites: int = 1, site_imbalance: float | None = None,
                             anatomy: tuple[str, ...] = ("template",), regions: tuple[str, ...] = CALIBRATED_REGIONS,
                             twins: bool = False, **options):
    """A simulated cohort whose *preprocessed* derivatives are written directly, without registration.

    The raw BIDS dataset and its ground truth come from :func:`adheat_app.simulate.simulate_cohort`;
    the template-space images are the simulator's own (individual anatomy, planted atrophy, Gaussian noise),
    normalised by the configured ``--intensity-norm`` and written where the participant level writes them
    (:func:`adheat_app.simulate.write_template_space_derivatives`). Training, heatmap and evaluation tests start
    from here in seconds.

    Parameters
    ----------
    sites, site_imbalance
        Scanner sites and the share of AD subjects from site 0 (the simulator's confound).
    atrophy_model : str
        The simulator's atrophy model. Darkening by default: the training, heatmap and evaluation tests that use
        this helper were calibrated on it (effect sizes up to 0.5 of the region's intensity); on tissue-loss
        cohorts of these sizes the default CNN learns far less (docs/simulation.md).
    anatomy : tuple of str
        The parent (one): the registration target itself by default, on which these tests were calibrated.
    regions : tuple of str
        The planted set: by default the medial and inferior temporal set these tests were calibrated on (the
        simulator's default set is larger since it plants region-specific rates).
    twins : bool
        Also write each AD and MCI scan's raw twin without atrophy (``adheat-simulate --twins``).
    options
        ``section__field=value`` overrides of the run configuration (e.g. ``training__folds=3``).

    Returns
    -------
    tuple
        ``(config, derivs, cohort, truth)`` where ``truth`` is the simulator's :class:`GroundTruth`.
    """
    from adheat_app import simulate
    from adheat_app.bids import Derivatives
    from adheat_app.cohort import load_cohort
    from adheat_app.config import build_config

    bids_dir = simulate.simulate_cohort(root / "bids", n_subjects=n_subjects, resolution=resolution, seed=seed,
                                        effect_size=effect_size, null=null, sessions=sessions, n_mci=n_mci,
                                        atrophy_model=atrophy_model, sites=sites, site_imbalance=site_imbalance,
                                        anatomy=anatomy, regions=regions, twins=twins)
    truth = simulate.build_ground_truth(resolution, regions, anatomy=anatomy[0])
    sections: dict[str, dict] = {"execution": {"resolution": resolution, "seed": seed, "nprocs": 1,
                                               "omp_nthreads": 1}}
    for key, value in options.items():
        section, name = key.split("__")
        sections.setdefault(section, {})[name] = value
    config = build_config(bids_dir, root / "out", ("group",), {}, sections)
    derivs = Derivatives(config.output_dir, bids_dir)
    derivs.initialize()
    specs = simulate.plan_cohort(n_subjects, seed=seed, effect_size=effect_size, null=null, n_mci=n_mci,
                                 sessions=sessions, atrophy_model=atrophy_model, sites=sites,
                                 site_imbalance=site_imbalance, anatomy=anatomy)
    inputs = simulate.write_template_space_derivatives(derivs, {anatomy[0]: truth}, specs,
                                                       config.preprocessing.intensity_norm,
                                                       seed=seed)
    cohort = load_cohort(config, derivs, inputs)
    return config, derivs, cohort, truth


def heatmap_file(derivs, cohort, scan, method: str) -> Path:
    """The template-space heatmap of one scan of ``cohort`` (:func:`adheat_app.layout.heatmap_path`)."""
    from adheat_app.layout import heatmap_path

    return heatmap_path(derivs.root, scan, cohort.space, cohort.res_label, method)


def assert_same_outputs(got: Path, expected: Path) -> list[str]:
    """Assert two output folders hold the same NIfTIs and tables (to 1e-6), and return the files compared.

    Per-epoch wall-clock times (the ``seconds`` column) are left out.
    """
    import pandas as pd

    def outputs(root: Path) -> dict[str, object]:
        found: dict[str, object] = {}
        for path in sorted(root.rglob("*.nii.gz")):
            found[str(path.relative_to(root))] = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        for path in sorted(root.rglob("*.tsv")):
            found[str(path.relative_to(root))] = pd.read_csv(path, sep="\t").drop(columns=["seconds"],
                                                                                   errors="ignore")
        return found

    first, second = outputs(got), outputs(expected)
    assert sorted(first) == sorted(second)
    for name, value in second.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(first[name], value, check_exact=False, atol=1e-6, obj=name)
        else:
            np.testing.assert_allclose(first[name], value, rtol=0, atol=1e-6, err_msg=name)
    return sorted(first)
