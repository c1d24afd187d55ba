"""The output layout: every file and folder name adheat writes or reads back is built and parsed here.

File names follow the BIDS grammar ``key-value_key-value_<suffix><extension>``:
:func:`filename` builds one from entities in :data:`ENTITY_ORDER`,
:func:`parse_name` splits one back into its entities (no regular expression:
the grammar is split on ``_`` and ``-``, and every value must be a BIDS label).
The named builders below (:func:`preproc_paths`, :func:`heatmap_path`,
:func:`group_map_path`, :func:`fold_dir`, ...) are the only places that put a
derivative together, and the finders (:func:`find_preproc`,
:func:`find_heatmaps`, :func:`group_map_methods`, :func:`trained_folds`, ...)
the only places that read names back, so the two cannot drift apart.

Layout of an output folder::

    sub-<s>/[ses-<x>/]anat/<key>_space-<S>_res-<r>_desc-preproc_T1w.nii.gz   preprocessed T1w (+ .json)
    sub-<s>/[ses-<x>/]anat/<key>_space-<S>_res-<r>_desc-brain_mask.nii.gz    brain mask
    sub-<s>/[ses-<x>/]anat/<key>_space-<S>_res-<r>_desc-logjacobian_T1w.nii.gz log Jacobian determinant (SyN)
    sub-<s>/[ses-<x>/]anat/<key>_space-<S>_res-<r>_desc-<Method>_heatmap.nii.gz
    sub-<s>/figures/<key>_desc-reg_T1w.svg                                    registration QC figure
    group/<Method>/space-<S>_res-<r>_label-<L>_desc-<Method>_stat-<stat>_heatmap.nii.gz
    group/*.tsv, group/figures/                                               group tables and figures
    group/<table>.tsv (+ .json)  cv_metrics, predictions, overlap, answer, ...  group tables (:func:`group_table`)
    group/figures/desc-<Map>_overlap.png                                      overlap curves
    group/figures/desc-curves_faithfulness.png (+ .json)                      deletion and insertion curves
    models/<model>/fold-<k>/model.pt + model.json, split.tsv, ...              trained fold models
    models/<model>/repeat-<r>/fold-<k>/, sub-<s>/anat/*_heatmap.nii.gz         repeat r > 0 of --repeats
    models/<model>/verdict.json                                               the model's verdict against chance
    twins/sub-<s>/[ses-<x>/]anat/...                                          simulated twins, preprocessed (twin test)

A map's ``desc`` value packs the method, an optional control and an optional
input channel (``IG``, ``IGlogjacobian``, ``IGRandom``,
``IGRandomlogjacobian``): :class:`MapName` builds it and parses it back.

``<key>`` is the scan key :func:`scan_key`: ``sub-<s>`` or ``sub-<s>_ses-<x>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: Order of entities in output file names (BIDS entity table order; ``stat`` last).
ENTITY_ORDER = ("sub", "ses", "from", "to", "mode", "space", "res", "label", "desc", "stat")
#: Folders and suffixes adheat writes that the BIDS specification does not define. Folders are named without a
#: trailing slash: bids-validator-deno 3 does not apply ``name/`` patterns to folders (measured).
BIDSIGNORE = ("work", "logs", "models", "group", "twins", "figures", "*.html", "*_heatmap.*", "*_xfm.h5", "*_xfm.json",
              "*_qc.*")
#: Extensions :func:`parse_name` and :func:`sidecar_path` recognise (longest first).
EXTENSIONS = (".nii.gz", ".nii", ".h5", ".tsv", ".json", ".png", ".svg", ".html")
#: Extensions of NIfTI images adheat reads; the first is the one it writes.
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
NIFTI = NIFTI_EXTENSIONS[0]
#: Extension of the JSON sidecars of data files (:func:`sidecar_path`).
SIDECAR = ".json"
#: Files shipped in ``adheat_app/data``: the built-in region prior (with its ``.json`` sidecar) and its foci.
BUILTIN_REFERENCE_MAP, BUILTIN_REFERENCE_FOCI = "ad_region_prior.nii.gz", "ad_region_prior_foci.tsv"
#: Files of one trained fold model.
MODEL_WEIGHTS, MODEL_CARD = "model.pt", "model.json"
#: Other files of a fold folder: the subjects and their sets, the resumable checkpoint, the training curve (``.tsv``
#: and ``.png``), the fold's test predictions and its training mean image (the ``template`` heatmap baseline).
SPLIT, CHECKPOINT, TRAINING_CURVE, FOLD_PREDICTIONS, TRAINING_MEAN = (
    "split.tsv", "checkpoint.pt", "training_curve", "predictions.tsv", "training_mean.nii.gz")
#: Group tables (``group/<name>.tsv``, :func:`group_table`).
CV_METRICS, PREDICTIONS, PREPROC_QC, SANITY_CHECK = "cv_metrics", "predictions", "preproc_qc", "sanity_check"
#: The training-side yardsticks: does the CNN's score add to the covariates (:mod:`adheat_app.baseline.nested`),
#: and the permutation test with retraining (:mod:`adheat_app.training.permutation`).
NESTED_TEST, PERMUTATION_TEST = "covariates_nested_test", "permutation_test"
OVERLAP, OVERLAP_DIFFERENCES, ANSWER, REGIONS, DISTANCES = (
    "overlap", "overlap_differences", "answer", "regions", "distances")
#: Subject-level overlap: each subject's own map against its own truth (simulated cohorts only).
SUBJECT_OVERLAP = "subject_overlap"
#: Faithfulness tables (deletion curves, channel ablation), rendered by the report where they exist.
FAITHFULNESS, CHANNEL_ABLATION = "faithfulness", "channel_ablation"
#: The deletion and insertion curves behind :data:`FAITHFULNESS` (every step), drawn by :func:`faithfulness_figure`.
FAITHFULNESS_CURVES = "faithfulness_curves"
#: The twin test: the share of the disease's effect on the model that a map's top region carries.
TWIN_TEST = "twin_test"
#: Controls a map's ``desc`` may name after its method (:class:`MapName`): ``Random``, the method's maps of a
#: randomly initialised model, and ``PermutedLabels``, its maps of the models trained on permuted labels (both
#: ``--sanity-check``). A new control is one more entry here.
CONTROLS: tuple[str, ...] = ("Random", "PermutedLabels")
#: Input channels a map's ``desc`` may end in (:class:`MapName`; the channels of ``--input``).
CHANNELS: tuple[str, ...] = ("intensity", "logjacobian")
#: Suffix of a method's name for its maps of a randomly initialised model (``desc-<Method>Random``).
RANDOM_SUFFIX = CONTROLS[0]
#: Suffix of a method's name for its maps of the models trained on permuted labels (``desc-<Method>PermutedLabels``).
PERMUTED_LABELS_SUFFIX = CONTROLS[1]


class ScanLike(Protocol):
    """Anything with BIDS ``subject`` and ``session`` labels (a raw input or a preprocessed scan)."""

    subject: str
    session: str | None


def is_label(text: str) -> bool:
    """Whether ``text`` is a BIDS label: one or more ASCII letters and digits."""
    return bool(text) and text.isascii() and text.isalnum()


def to_label(text: object) -> str:
    """``text`` reduced to a BIDS label (its ASCII letters and digits; ``unknown`` when none is left)."""
    return "".join(c for c in str(text) if c.isascii() and c.isalnum()) or "unknown"


def scan_key(subject: str, session: str | None = None) -> str:
    """``sub-01`` or ``sub-01_ses-02``: the prefix of every per-scan output name."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def filename(suffix: str, extension: str = ".nii.gz", **entities: str | float | None) -> str:
    """Build a BIDS file name from entities in canonical order.

    Entity keys are those of :data:`ENTITY_ORDER` (``from_`` may be used for
    ``from``); None values are left out.
    """
    values = {k.rstrip("_"): v for k, v in entities.items() if v is not None}
    unknown = set(values) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    parts = [f"{k}-{values[k]}" for k in ENTITY_ORDER if k in values]
    return "_".join([*parts, suffix]) + extension


@dataclass(frozen=True)
class Name:
    """A parsed BIDS file name: entities in file order, suffix and extension."""

    entities: dict[str, str] = field(default_factory=dict)
    suffix: str = ""
    extension: str = ""

    def get(self, entity: str) -> str | None:
        """The value of one entity (None when the name lacks it)."""
        return self.entities.get(entity)

    @property
    def key(self) -> str:
        """The scan key (:func:`scan_key`) of a per-scan name."""
        return scan_key(self.entities["sub"], self.get("ses"))


def parse_name(name: str) -> Name | None:
    """Split a file name into entities, suffix and extension (None when it is not a BIDS name).

    A BIDS name is ``key-value`` pairs joined by ``_`` (keys lower-case
    letters, values BIDS labels, no key twice), then ``_<suffix>`` (letters
    and digits) and one of :data:`EXTENSIONS`.
    """
    extension = next((ext for ext in EXTENSIONS if name.endswith(ext)), None)
    if extension is None:
        return None
    *pairs, suffix = name[: -len(extension)].split("_")
    if not is_label(suffix):
        return None
    entities: dict[str, str] = {}
    for pair in pairs:
        key, dash, value = pair.partition("-")
        if not dash or not (key.isascii() and key.isalpha() and key.islower()) or not is_label(value) \
                or key in entities:
            return None
        entities[key] = value
    return Name(entities, suffix, extension)


def _matches(name: Name | None, suffix: str, extensions: Iterable[str], **entities: str | None) -> bool:
    """Whether ``name`` has ``suffix``, one of ``extensions`` and exactly the given entities (None: absent)."""
    if name is None or name.suffix != suffix or name.extension not in extensions:
        return False
    return all(name.get(k.rstrip("_")) == v for k, v in entities.items())


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a data file (``x.nii.gz`` -> ``x.json``)."""
    name = Path(path).name
    for ext in EXTENSIONS:
        if name.endswith(ext) and ext != ".json":
            return Path(path).with_name(name[: -len(ext)] + ".json")
    return Path(path).with_suffix(".json")


@dataclass(frozen=True)
class MapName:
    """The name of a map: a method, optionally a control of it and an input channel; :attr:`desc` is its ``desc``.

    ``MapName("IG")`` is ``IG``; ``MapName("IG", channel="logjacobian")`` is
    ``IGlogjacobian`` (the map of one channel of a several-channel input);
    ``MapName("IG", "Random")`` is ``IGRandom`` (a control: the method on a
    randomly initialised model); ``MapName("IG", "Random", "logjacobian")`` is
    ``IGRandomlogjacobian``. :meth:`parse` reads a ``desc`` back. Controls
    are those of :data:`CONTROLS`, channels those of :data:`CHANNELS`.
    """

    method: str
    control: str | None = None
    channel: str | None = None

    def __post_init__(self) -> None:
        if not is_label(self.method):
            raise ValueError(f"map name {self.method!r}: a method name is a BIDS label (letters and digits)")
        if self.control is not None and self.control not in CONTROLS:
            raise ValueError(f"map name control {self.control!r}: not one of {CONTROLS}")
        if self.channel is not None and self.channel not in CHANNELS:
            raise ValueError(f"map name channel {self.channel!r}: not one of {CHANNELS}")

    @property
    def desc(self) -> str:
        """The ``desc`` value: method, control and channel joined (``IGRandomlogjacobian``)."""
        return self.method + (self.control or "") + (self.channel or "")

    @property
    def summed(self) -> MapName:
        """The name of the map summed over the input channels (this name without its channel)."""
        return MapName(self.method, self.control)

    @property
    def is_control(self) -> bool:
        """Whether the name has a control suffix."""
        return self.control is not None

    @classmethod
    def parse(cls, desc: str) -> MapName:
        """The map name of a ``desc`` value (its channel, then its control, read off the end)."""
        rest, channel = _strip_suffix(desc, CHANNELS)
        method, control = _strip_suffix(rest, CONTROLS)
        return cls(method, control, channel)


def _strip_suffix(text: str, suffixes: Iterable[str]) -> tuple[str, str | None]:
    """``text`` without the longest of ``suffixes`` it ends in (and is longer than), and that suffix."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix) and len(text) > len(suffix):
            return text.removesuffix(suffix), suffix
    return text, None


# Input datasets (BIDS and simulated cohorts) ---------------------------------------------------------------------

def dataset_description(root: Path) -> Path:
    """``root/dataset_description.json`` of a BIDS or BIDS-Derivatives dataset."""
    return Path(root) / "dataset_description.json"


def participants_table(bids_dir: Path) -> Path:
    """``bids_dir/participants.tsv``."""
    return Path(bids_dir) / "participants.tsv"


def participants_sidecar(bids_dir: Path) -> Path:
    """``bids_dir/participants.json``: the descriptions of the participants table's columns."""
    return sidecar_path(participants_table(bids_dir))


def simulation_truth_path(bids_dir: Path, space: str, res: str) -> Path:
    """The planted-atrophy map of a simulated cohort on the ``space``/``res`` grid, which the simulator writes and the
    evaluation reads: ``bids_dir/derivatives/simulation/space-<S>_res-<r>_desc-atrophy_probseg.nii.gz``."""
    return simulation_root(bids_dir) / filename("probseg", space=space, res=res, desc="atrophy")


def is_foci_file(path: str | Path) -> bool:
    """Whether a ``--reference-map`` file holds coordinates for a meta-analysis (Sleuth ``.txt`` or foci ``.tsv``)."""
    return Path(path).suffix.lower() in (".txt", ".tsv")


def is_foci_table(path: str | Path) -> bool:
    """Whether a coordinates file is a foci table (``.tsv``) rather than a Sleuth text file."""
    return Path(path).suffix.lower() == ".tsv"


def is_json(path: str | Path) -> bool:
    """Whether a file name ends in ``.json`` (any case)."""
    return Path(path).suffix.lower() == ".json"


# Per-scan derivatives ------------------------------------------------------------------------------------------

def subject_dir(root: Path, subject: str) -> Path:
    """``root/sub-<subject>``."""
    return Path(root) / f"sub-{subject}"


def subject_path(root: Path, subject: str, session: str | None, suffix: str, extension: str = ".nii.gz",
                 datatype: str = "anat", **entities: str | float | None) -> Path:
    """Path of a per-scan output: ``sub-X/[ses-Y/]<datatype>/sub-X[_ses-Y]_..._<suffix><ext>``."""
    folder = subject_dir(root, subject)
    if session:
        folder = folder / f"ses-{session}"
    return folder / datatype / filename(suffix, extension, sub=subject, ses=session, **entities)


def preproc_paths(root: Path, scan: ScanLike, space: str, res: str) -> tuple[Path, Path]:
    """The preprocessed T1w and the brain mask of one scan on the ``space``/``res`` grid."""
    image = subject_path(root, scan.subject, scan.session, "T1w", space=space, res=res, desc="preproc")
    mask = subject_path(root, scan.subject, scan.session, "mask", space=space, res=res, desc="brain")
    return image, mask


def logjacobian_path(root: Path, scan: ScanLike, space: str, res: str) -> Path:
    """The log Jacobian determinant map of one scan's registration on the ``space``/``res`` grid."""
    return subject_path(root, scan.subject, scan.session, "T1w", space=space, res=res, desc="logjacobian")


def find_preproc(root: Path, subject: str = "*", extension: str = ".nii.gz") -> list[tuple[Path, Name]]:
    """Preprocessed T1w files (``extension``: the image or its ``.json`` sidecar) of one or every subject.

    Only names adheat writes count: a scan key, ``space``, ``res`` and
    ``desc-preproc``, suffix ``T1w``; sorted by path.
    """
    found = []
    for path in sorted(Path(root).glob(f"sub-{subject}/**/anat/*_desc-preproc_T1w{extension}")):
        name = parse_name(path.name)
        if _matches(name, "T1w", (extension,), desc="preproc") and set(name.entities) - {"ses"} == \
                {"sub", "space", "res", "desc"}:
            found.append((path, name))
    return found


def registration_figure(root: Path, scan: ScanLike) -> Path:
    """The registration QC figure of one scan: ``sub-<s>/figures/<key>_desc-reg_T1w.svg``."""
    return subject_dir(root, scan.subject) / "figures" / filename("T1w", ".svg", sub=scan.subject, ses=scan.session,
                                                                  desc="reg")


def scan_figures(root: Path, subject: str, key: str) -> list[Path]:
    """Every figure (SVG or PNG) of one scan in its subject's ``figures`` folder, sorted."""
    folder = subject_dir(root, subject) / "figures"
    return sorted([*folder.glob(f"{key}_*.svg"), *folder.glob(f"{key}_*.png")])


def transform_paths(root: Path, scan: ScanLike, extensions: tuple[str, ...] = (".h5",)) -> list[Path]:
    """The saved template-to-T1w transforms of one scan (``..._from-<S>_to-T1w_mode-image_xfm<extension>``)."""
    folder = subject_path(root, scan.subject, scan.session, "xfm", ".h5").parent
    key = scan_key(scan.subject, scan.session)
    return [path for path in sorted(folder.glob(f"{key}_from-*_to-T1w_mode-image_xfm.*"))
            if _matches(parse_name(path.name), "xfm", extensions, to="T1w", mode="image")]


def heatmap_path(root: Path, scan: ScanLike, space: str, res: str | None, method: str) -> Path:
    """One scan's heatmap of ``method`` on the ``space``/``res`` grid (``res`` None: the native ``T1w`` grid)."""
    return subject_path(root, scan.subject, scan.session, "heatmap", space=space, res=res, desc=method)


def has_heatmaps(root: Path) -> bool:
    """Whether any per-scan heatmap exists under ``root``, on any grid."""
    return any(_matches(parse_name(path.name), "heatmap", (".nii.gz",))
               for path in Path(root).glob("sub-*/**/*_heatmap.nii.gz"))


def find_heatmaps(root: Path, space: str, res: str, subject: str = "*") -> list[tuple[Path, Name]]:
    """Per-scan heatmaps on the ``space``/``res`` grid of one or every subject; the method is ``desc``."""
    found = []
    for path in sorted(Path(root).glob(f"sub-{subject}/**/*_heatmap.nii.gz")):
        name = parse_name(path.name)
        if _matches(name, "heatmap", (".nii.gz",), space=space, res=res) and name.get("desc"):
            found.append((path, name))
    return found


def heatmap_methods(root: Path, space: str, res: str) -> list[str]:
    """Methods with at least one per-scan heatmap on the ``space``/``res`` grid, sorted."""
    return sorted({name.get("desc") for _, name in find_heatmaps(root, space, res)})


# Group derivatives ---------------------------------------------------------------------------------------------

def group_dir(root: Path) -> Path:
    """``root/group``: the group tables, figures and maps."""
    return Path(root) / "group"


def group_path(root: Path, suffix: str, extension: str = ".nii.gz", **entities: str | float | None) -> Path:
    """Path of a group-level output under ``group/``."""
    return group_dir(root) / filename(suffix, extension, **entities)


def group_table(root: Path, table: str) -> Path:
    """A group table ``group/<table>.tsv`` (``table``: :data:`CV_METRICS`, :data:`OVERLAP`, ...); its sidecar is
    :func:`sidecar_path` of it."""
    return group_dir(root) / f"{table}.tsv"


def overlap_figure(root: Path, desc: str) -> Path:
    """The overlap curves of one map: ``group/figures/desc-<desc>_overlap.png``."""
    return group_dir(root) / "figures" / filename("overlap", ".png", desc=desc)


def overlap_figures(root: Path) -> list[Path]:
    """Every figure of :func:`overlap_figure` that exists, sorted."""
    return sorted(path for path in (group_dir(root) / "figures").glob("desc-*_overlap.png")
                  if _matches(parse_name(path.name), "overlap", (".png",)))


def faithfulness_figure(root: Path) -> Path:
    """The deletion and insertion curves of every map: ``group/figures/desc-curves_faithfulness.png``."""
    return group_dir(root) / "figures" / filename("faithfulness", ".png", desc="curves")


def group_map_path(root: Path, space: str, res: str, method: str, label: str, stat: str = "mean") -> Path:
    """A group map: ``group/<method>/space-..._res-..._label-<label>_desc-<method>_stat-<stat>_heatmap.nii.gz``."""
    return group_dir(root) / method / filename("heatmap", ".nii.gz", space=space, res=res, label=label, desc=method,
                                               stat=stat)


def group_map_methods(root: Path, space: str, res: str, label: str = "all") -> list[str]:
    """Methods with a group mean map of ``label`` on the ``space``/``res`` grid, in their own folder."""
    methods = set()
    for path in group_dir(root).glob("*/*_heatmap.nii.gz"):
        name = parse_name(path.name)
        if _matches(name, "heatmap", (".nii.gz",), sub=None, space=space, res=res, label=label, stat="mean") \
                and name.get("desc") == path.parent.name:
            methods.add(path.parent.name)
    return sorted(methods)


# Trained models ------------------------------------------------------------------------------------------------

def fold_dir(models_dir: Path, model: str, k: int, repeat: int = 0) -> Path:
    """Folder of fold ``k`` of ``model``: ``models_dir/<model>/fold-<k>``; repeat ``r`` > 0 of ``--repeats``:
    ``models_dir/<model>/repeat-<r>/fold-<k>``."""
    root = Path(models_dir) / model
    return (root if repeat == 0 else root / f"repeat-{repeat}") / f"fold-{k}"


def permutation_checkpoint(work_dir: Path, model: str, permutation: int, k: int) -> Path:
    """``work_dir/permutation/<model>/permutation-<i>_fold-<k>.pt``: a permutation test model's checkpoint (kept
    only while it trains)."""
    return Path(work_dir) / "permutation" / model / f"permutation-{permutation}_fold-{k}.pt"


def repeat_root(models_dir: Path, model: str, repeat: int) -> Path:
    """``models_dir/<model>/repeat-<r>``: repeat ``r`` > 0's fold models and its per-scan out-of-fold heatmaps
    (``sub-<s>/[ses-<x>/]anat/..._heatmap.nii.gz``, named as those of repeat 0 in the output folder)."""
    return Path(models_dir) / model / f"repeat-{repeat}"


def permuted_labels_models_dir(models_dir: Path) -> Path:
    """``models_dir/permutedlabels``: the fold models trained on permuted labels (``--sanity-check``)."""
    return Path(models_dir) / "permutedlabels"


def verdict_path(models_dir: Path, model: str) -> Path:
    """``models_dir/<model>/verdict.json``: the cross-validated model's verdict against chance."""
    return Path(models_dir) / model / "verdict.json"


def training_curve_table(folder: Path) -> Path:
    """A fold's training curve table: ``<fold folder>/training_curve.tsv``."""
    return Path(folder) / f"{TRAINING_CURVE}.tsv"


def training_curve_figure(folder: Path) -> Path:
    """A fold's training curve figure: ``<fold folder>/training_curve.png``."""
    return Path(folder) / f"{TRAINING_CURVE}.png"


def trained_folds(models_dir: Path, model: str, repeat: int = 0) -> list[int]:
    """Indices of the folds of ``model`` (of repeat ``repeat``) whose training finished (``fold-<k>/model.json``
    exists), sorted."""
    folds = []
    for card in fold_dir(models_dir, model, 0, repeat).parent.glob(f"fold-*/{MODEL_CARD}"):
        suffix = card.parent.name.removeprefix("fold-")
        if suffix.isdigit():
            folds.append(int(suffix))
    return sorted(folds)


def trained_models(models_dir: Path) -> list[str]:
    """Models with at least one finished fold under ``models_dir``, sorted."""
    return sorted(p.name for p in Path(models_dir).glob("*") if p.is_dir() and trained_folds(models_dir, p.name))


# fMRIPrep/sMRIPrep anatomical derivatives (``--anat-derivatives``) -------------------------------------------------

def find_fmriprep_anat(root: Path, scan: ScanLike) -> list[tuple[Path, Name]]:
    """The fMRIPrep preprocessed T1w images of one scan, in any space: the session's ``anat`` folder first.

    fMRIPrep writes one anatomical reference per subject (its ``anat``
    folder) or per session; names carry any entities between the scan key and
    ``space``, an optional ``res``, and end in ``desc-preproc_T1w.nii[.gz]``.
    """
    folders = [subject_dir(root, scan.subject) / "anat"]
    if scan.session:
        folders.insert(0, subject_dir(root, scan.subject) / f"ses-{scan.session}" / "anat")
    found = []
    for folder in folders:
        for path in sorted(folder.glob(f"sub-{scan.subject}*_desc-preproc_T1w.nii*")):
            name = parse_name(path.name)
            if _matches(name, "T1w", (".nii.gz", ".nii"), sub=scan.subject, desc="preproc") and name.get("space") \
                    and name.get("ses") in (None, scan.session):
                found.append((path, name))
    return found


def fmriprep_mask(image: Path) -> Path:
    """The brain mask fMRIPrep writes beside a preprocessed T1w (``desc-brain_mask``)."""
    return image.with_name(image.name.replace("_desc-preproc_T1w", "_desc-brain_mask"))


# Simulated ground truth (``adheat-simulate``: ``bids_dir/derivatives/simulation``) --------------------------------

def simulation_root(bids_dir: Path) -> Path:
    """The simulator's truth dataset in a simulated BIDS dataset (its cohort map: :func:`simulation_truth_path`)."""
    return Path(bids_dir) / "derivatives" / "simulation"


def simulation_subject_map(root: Path, subject: str, space: str, res: str, suffix: str) -> Path:
    """A subject's template-space truth: ``suffix`` ``logjacobian`` (planted change) or ``probseg`` (region map)."""
    return subject_path(root, subject, None, suffix, space=space, res=res, desc="atrophy")


def simulation_sites(root: Path) -> Path:
    """The simulated scanner sites' table (``sites.tsv``; its sidecar: :func:`sidecar_path`)."""
    return Path(root) / "sites.tsv"


def simulation_twin(root: Path, scan: ScanLike) -> Path:
    """The scan without its planted atrophy (``--twins``), on the raw scan's grid."""
    return subject_path(root, scan.subject, scan.session, "T1w", desc="twin")


def twins_root(root: Path) -> Path:
    """``root/twins``: the simulated twins (:func:`simulation_twin`) preprocessed as their scans were, under the same
    per-scan names as the output folder's scans (a derivatives dataset of its own, read by the twin test)."""
    return Path(root) / "twins"


#: Files of the built-in parent heads inside the packages that ship them: name -> (package, path in it).
BUILTIN_PARENT_FILES = {
    "MNI152NLin6Asym": ("nimare", ("resources", "templates", "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz")),
    "MNI152NLin2009aSym": ("nilearn", ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")),
}


def simulation_parent_paths(root: Path, parent: str, space: str, res: str) -> dict[str, Path]:
    """A parent's prepared brain, mask, AAL3 labels and SyN transforms (to the template and back)."""
    folder = Path(root) / "parents" / parent
    return {"brain": folder / filename("T1w", space=space, res=res, desc="brain"),
            "mask": folder / filename("mask", space=space, res=res, desc="brain"),
            "labels": folder / filename("dseg", space=space, res=res, desc="AAL3"),
            "forward": folder / filename("xfm", ".h5", from_="parent", to=space, mode="image"),
            "inverse": folder / filename("xfm", ".h5", from_=space, to="parent", mode="image")}
