"""adheat: where does a 3D CNN look when it separates Alzheimer's disease from controls?

A BIDS App that preprocesses T1-weighted MRI into template space, trains 3D CNNs
with subject-level cross-validation, derives heatmaps with the attribution methods
of Wang et al. (2023), Rieke et al. (2018) and Bintsi et al. (2021), compares them
with linear-SVM activation patterns and scores them against a meta-analysis map.

The command line lives in :mod:`adheat_app.cli`; the two analysis levels are
composed in :mod:`adheat_app.workflows`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
