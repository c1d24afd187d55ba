"""Reference kinds: every registered kind honours its contract, and the registry refuses one that does not."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_preprocessed_cohort

from adheat_app.bids import Derivatives
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references import REFERENCES, Context, ReferenceKind
from adheat_app.evaluation.references._catalog import (
    all_references, headline_order, kind_of, methods_text, subject_references,
)
from adheat_app.evaluation.references._contract import check_kind


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    """Two runs on one tiny simulated cohort (10 subjects, 4 mm) that, together, give every kind something to load:
    a NIfTI ``--reference-map`` with the cohort test, and a foci ``--reference-map`` (ALE at a fixed threshold)."""
    root = tmp_path_factory.mktemp("references")
    config, derivs, cohort, truth = make_preprocessed_cohort(root, n_subjects=10, resolution=4.0, effect_size=0.5,
                                                             evaluation__n_permutations=40)
    template = truth.template
    nifti = root / "atrophy.nii.gz"
    nib.save(nib.Nifti1Image(truth.probseg.astype(np.float32), template.affine), nifti)
    foci = root / "foci.tsv"
    rng = np.random.default_rng(0)
    pd.DataFrame([(f"s{e}", 20, *(np.array([-24.0, -10.0, -20.0]) + rng.normal(0, 3, 3))) for e in range(4)],
                 columns=["study", "n_subjects", "x", "y", "z"]).to_csv(foci, sep="\t", index=False)
    with_map = config.replace("evaluation", reference_map=str(nifti), reference_threshold=0.5)
    with_foci = config.replace("evaluation", reference_map=str(foci), reference_threshold=0.001, n_permutations=0)
    derivs = Derivatives(config.output_dir, config.bids_dir)
    return [Context(run, derivs, cohort, template) for run in (with_map, with_foci)]


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_each_reference_kind_honours_its_contract(name, contexts):
    kind = REFERENCES[name]
    check_kind(name, kind)
    assert isinstance(kind.caveat, str)
    loaded = [ref for context in contexts for ref in kind.load(context)]
    assert loaded, f"reference kind {name} loads no map in the test contexts; add a context where it applies"
    template = contexts[0].template
    for ref in loaded:
        assert isinstance(ref, Reference) and ref.name in kind.names and kind_of(ref.name) is kind
        assert ref.values.shape == template.shape and ref.values.dtype == np.float32
        assert ref.binary().shape == template.shape and ref.binary().dtype == bool
        assert ref.binary().any() or ref.uninformative  # an empty map says why it is not scored
        assert not ref.values[~template.mask_array()].any()  # nothing outside the brain
        assert ref.description and ref.describe()["Name"] == ref.name
    texts = [kind.methods_text(context.config) for context in contexts]
    assert all(text == "" or text.endswith((" ", ".")) for text in texts)


def test_reference_names_are_unique_and_ordered(contexts):
    names = [n for kind in REFERENCES.values() for n in kind.names]
    assert len(names) == len(set(names))
    assert sorted(headline_order()) == sorted(names)
    assert headline_order()[0] == "simulation" and headline_order()[-1] == "anatomicalprior"  # the prior never leads
    refs = all_references(contexts[0])
    assert [r.name for r in refs] == ["custom", "anatomicalprior", "simulation", "cohort"][:len(refs)]
    assert "region prior" in methods_text(contexts[1].config) and "ALE" in methods_text(contexts[1].config)


def test_reading_only_computes_nothing(contexts, tmp_path):
    """The report's context (``compute=False``) on an empty output dataset returns the maps that need no work."""
    context = contexts[1]
    empty = Derivatives(tmp_path / "out", context.config.bids_dir)
    reading = Context(context.config, empty, context.cohort, context.template, compute=False)
    assert {ref.name for ref in all_references(reading)} == {"anatomicalprior", "simulation"}
    assert not any(tmp_path.rglob("*.nii.gz"))


def test_each_subjects_own_truth_comes_from_the_simulation_and_only_where_it_exists(contexts, tmp_path):
    """Per-subject maps: the simulated AD subjects' region maps, on the analysis grid, none without a simulation."""
    import dataclasses

    context = contexts[0]
    template, cohort = context.template, context.cohort
    subjects = subject_references(context)
    assert list(subjects) == ["simulation"]
    assert subjects["simulation"] and set(subjects["simulation"]) <= {s.subject for s in cohort.scans
                                                                      if s.diagnosis == "AD"}
    for ref in subjects["simulation"].values():
        assert ref.values.shape == template.shape and ref.binary().any() and ref.name == "simulation"
        assert not ref.values[~template.mask_array()].any()
    elsewhere = Context(dataclasses.replace(context.config, bids_dir=tmp_path), context.derivs, cohort, template)
    assert subject_references(elsewhere) == {}


def test_a_kind_breaking_the_contract_is_refused():
    class Broken(ReferenceKind):
        name = "broken"
        names = ("bro-ken",)

        def load(self, context):
            return []

    with pytest.raises(TypeError, match="alphanumeric table names; methods_text\\(\\) is not implemented"):
        check_kind("broken", Broken())
    with pytest.raises(TypeError, match="not the registered 'other'"):
        check_kind("other", REFERENCES["meta"])
    with pytest.raises(TypeError, match="must be a ReferenceKind instance"):
        check_kind("meta", object())
