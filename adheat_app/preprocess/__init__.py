"""Participant-level preprocessing: every T1w to the analysis template, in parallel, failure-isolated.

Modules: :mod:`.workflow` (the pool of jobs, crash files, the QC table;
:func:`run_preprocessing` and :func:`to_native`), :mod:`.pipeline` (one
input's job), :mod:`.checks` (input images), :mod:`.skullstrip`,
:mod:`.register`, :mod:`.intensity`, :mod:`.qc` and :mod:`.reuse`
(``--anat-derivatives``).

Input errors: problems with an *option* (``--anat-derivatives`` pointing at a
folder without the needed files or in another space) raise
:class:`~adheat_app.errors.InputError` before anything is written. Problems
with one *image* (not NIfTI, truncated, 4D, NaN, no orientation, ...) are
per-subject failures at run time, each with a one-line message naming the
file (:mod:`.checks`), so one broken scan never stops a large cohort.
"""

from adheat_app.preprocess.workflow import run_preprocessing, to_native

__all__ = ["run_preprocessing", "to_native"]
