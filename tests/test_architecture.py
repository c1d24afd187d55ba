"""The package's structure: one module owns the file names, no module imports its way round in a cycle, no
function grows past :data:`MAX_FUNCTION_LINES` without saying why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adheat_app import layout

PACKAGE = Path(layout.__file__).parent
#: Functions of :mod:`re` that take a pattern first.
RE_FUNCTIONS = {"compile", "match", "search", "fullmatch", "sub", "subn", "findall", "finditer", "split"}
#: Pieces of a pattern that give it away as a file-name pattern (BIDS entities, suffixes, extensions).
NAME_TOKENS = ("sub-", "ses-", "space-", "res-", "desc-", "label-", "stat-", "fold-", "_T1w", "_mask", "_heatmap",
               "_xfm", "nii", ".tsv", ".json", ".h5", ".tmp", "partial")


#: Pieces of a string literal that give it away as a file name (outside a docstring or a message).
NAME_LITERAL_TOKENS = ("desc-", ".tsv", ".json", ".nii.gz")
#: File-name literals allowed outside layout.py, by module and literal, with the reason.
NAME_LITERAL_EXCEPTIONS = {
    ("evaluation/meta_analysis.py", "logp_desc-size_level-cluster_corr-FWE_method-montecarlo"):
        "the name of a NiMARE result map, not a file",
    ("evaluation/meta_analysis.py", "z_desc-size_level-cluster_corr-FWE_method-montecarlo"):
        "the name of a NiMARE result map, not a file",
    ("preprocess/backends/fireants.py", "fireants_field.nii.gz"):
        "a temporary file in the job's work folder, read back at once, never an output",
    ("report/viewer.py", "niivue.json"): "a file of the package (report/static/, the vendored NiiVue's record), "
                                         "not an output",
}
#: Modules left out of the file-name literal check, with the reason.
NAME_LITERAL_MODULES = {"simulate.py": "the simulator is rebuilt into a package by the ground-truth issue; it reads "
                                       "the truth map's name from layout.simulation_truth_path already"}
#: Functions left out of the length check, by module and name, with the reason.
LONG_FUNCTION_EXCEPTIONS = {
    ("simulate.py", "_write_dataset_files"): "the simulator is rebuilt into a package by the ground-truth issue",
    ("simulate.py", "simulate_cohort"): "the simulator is rebuilt into a package by the ground-truth issue",
}
#: Longest function (lines from ``def`` to its last line) without a reason in its docstring.
MAX_FUNCTION_LINES = 80
#: What a docstring says to allow a longer function.
LONG_FUNCTION_REASON = "Long because"


def _literal(node: ast.AST) -> str:
    """The literal text of a string or f-string node (empty for anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal(v) for v in node.values)
    return ""


def filename_patterns(source: str) -> list[str]:
    """Regular-expression patterns in ``source`` that match file names (``re.<function>(pattern, ...)`` calls)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RE_FUNCTIONS
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args):
            pattern = _literal(node.args[0])
            if any(token in pattern for token in NAME_TOKENS):
                found.append(pattern)
    return found


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """``id`` of every string that stands alone as a statement: docstrings of modules, classes and functions, and
    the attribute docstrings after assignments."""
    return {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
            and isinstance(node.value, (ast.Constant, ast.JoinedStr))}


def filename_literals(source: str) -> list[str]:
    """String literals of ``source`` that look like file names: one of :data:`NAME_LITERAL_TOKENS` and no whitespace.

    Docstrings are left out; messages (which hold whitespace) too. An
    f-string counts as a whole, its placeholders read as ``{}``; a literal
    inside a placeholder counts on its own.
    """
    tree = ast.parse(source)
    skip = _docstring_nodes(tree)
    parts = {id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for value in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        else:
            continue
        if any(token in text for token in NAME_LITERAL_TOKENS) and not any(c.isspace() for c in text):
            found.append(text)
    return found


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """Functions of ``source`` over ``limit`` lines whose docstring does not hold :data:`LONG_FUNCTION_REASON`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit and LONG_FUNCTION_REASON not in (ast.get_docstring(node) or ""):
                found.append((node.name, lines))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = ["adheat_app", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``adheat_app`` modules it imports, at module level or inside functions.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module,
    else ``a.b``; importing ``a.b.c`` also runs the ``__init__`` of ``a.b``,
    which counts unless the importer is inside ``a.b`` itself.
    """
    paths = {module_name(p): p for p in modules()}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                               for alias in node.names)
        edges = set()
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                ancestor = ".".join(parts[:i])
                if ancestor in paths and (i == len(parts) or not (name + ".").startswith(ancestor + ".")):
                    edges.add(ancestor)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as ``[a, b, ..., a]`` (empty when there is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    graph = import_graph()
    assert "adheat_app.attribution.runner" in graph["adheat_app.workflows.group"]  # imported inside run()
    assert "adheat_app.report" in graph["adheat_app.workflows.participant"]  # a package's __init__ counts


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(import_graph())
    assert cycle == [], f"import cycle: {' -> '.join(cycle)}"


def test_package_init_files_only_re_export():
    """An ``__init__.py`` holds a docstring, imports, ``__all__`` and at most a registry: no functions or classes."""
    for path in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(path.read_text())
        defined = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [], f"{path.relative_to(PACKAGE)} defines {defined}; move them to a module"


def test_the_detector_finds_the_filename_regexes_the_package_used_to_have():
    old = ('import re\n_PREPROC = re.compile(r"_space-(?P<space>[A-Za-z0-9]+)_res-(?P<res>[0-9p]+)_desc-preproc_T1w'
           '\\.nii\\.gz$")\nm = re.search(r"_desc-([A-Za-z0-9]+)_heatmap", name)\n'
           'p = re.compile(rf"^space-{s}_label-all_desc-([A-Za-z0-9]+)_stat-mean_heatmap\\.nii\\.gz$")\n'
           'x = re.sub(r"`([^`]+)`", r"<code>", text)\n')
    assert len(filename_patterns(old)) == 3


def test_no_filename_regex_outside_the_layout_module():
    offenders = {str(path.relative_to(PACKAGE)): patterns for path in modules() if path.name != "layout.py"
                 and (patterns := filename_patterns(path.read_text()))}
    assert offenders == {}, f"file names are parsed in adheat_app/layout.py only: {offenders}"


def test_the_literal_detector_finds_names_and_leaves_docstrings_and_messages():
    source = ('"""Writes ``desc-X_overlap.png``."""\n'
              'A = "overlap.tsv"\n'
              '"""Attribute docstring naming model.json."""\n'
              'def f(method):\n'
              '    """Reads desc-IG."""\n'
              '    raise ValueError(f"{method}: no desc-{method}_heatmap.nii.gz here; rerun")\n'
              '    return f"desc-{method}_overlap.png", root / "group" / "x.json", "IG" + "Random"\n'
              'g = f"{root / \'participants.tsv\'} is missing"\n')
    assert filename_literals(source) == ["overlap.tsv", "desc-{}_overlap.png", "x.json", "participants.tsv"]


def test_no_file_name_literal_outside_the_layout_module():
    offenders = {}
    for path in modules():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "layout.py" or relative in NAME_LITERAL_MODULES:
            continue
        found = [text for text in filename_literals(path.read_text())
                 if (relative, text) not in NAME_LITERAL_EXCEPTIONS]
        if found:
            offenders[relative] = found
    assert offenders == {}, f"file names are built in adheat_app/layout.py only (add a builder there): {offenders}"


def test_the_exceptions_are_still_needed():
    """Every listed exception still occurs, so the list shrinks as modules move their names to layout.py."""
    for (relative, text), reason in NAME_LITERAL_EXCEPTIONS.items():
        assert reason
        assert text in filename_literals((PACKAGE / relative).read_text()), (relative, text)


def test_the_length_check_counts_lines_and_reads_the_reason():
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    assert long_functions(f"def f():\n{body}\n") == [("f", 91)]
    assert long_functions(f'def f():\n    """Long because it is one table."""\n{body}\n') == []
    assert long_functions(f"def f():\n{body}\n", limit=100) == []


def test_no_function_longer_than_the_limit_without_a_reason():
    offenders = {}
    for path in modules():
        relative = path.relative_to(PACKAGE).as_posix()
        found = [(name, lines) for name, lines in long_functions(path.read_text())
                 if (relative, name) not in LONG_FUNCTION_EXCEPTIONS]
        if found:
            offenders[relative] = found
    assert offenders == {}, (f"functions over {MAX_FUNCTION_LINES} lines: split them, or say in the docstring "
                             f"'{LONG_FUNCTION_REASON} ...': {offenders}")


@pytest.mark.parametrize("name, expected", [
    ("sub-01_ses-2_space-MNI152NLin2009cAsym_res-2_desc-preproc_T1w.nii.gz",
     ({"sub": "01", "ses": "2", "space": "MNI152NLin2009cAsym", "res": "2", "desc": "preproc"}, "T1w", ".nii.gz")),
    ("space-MNI_res-4_label-all_desc-IG_stat-mean_heatmap.nii.gz",
     ({"space": "MNI", "res": "4", "label": "all", "desc": "IG", "stat": "mean"}, "heatmap", ".nii.gz")),
    ("sub-01_desc-reg_T1w.svg", ({"sub": "01", "desc": "reg"}, "T1w", ".svg")),
    ("sub-01_T1w.json", ({"sub": "01"}, "T1w", ".json")),
])
def test_parse_name_reads_back_what_filename_builds(name, expected):
    parsed = layout.parse_name(name)
    assert (parsed.entities, parsed.suffix, parsed.extension) == expected
    assert layout.filename(parsed.suffix, parsed.extension, **parsed.entities) == name


@pytest.mark.parametrize("name", ["sub-01_T1w.txt", "sub-0_1_T1w.nii.gz", "sub-01_sub-02_T1w.nii.gz",
                                  "sub-01_desc-a.b_T1w.nii.gz", "Sub-01_T1w.nii.gz", "sub-01_T1-w.nii.gz",
                                  "sub-_T1w.nii.gz", ".sub-01_T1w.nii.gz.partial-h-1-x.tmp.nii.gz"])
def test_parse_name_refuses_what_is_not_a_bids_name(name):
    assert layout.parse_name(name) is None


def test_named_paths_and_finders_agree(tmp_path):
    class Scan:
        subject, session = "01", "b"

    image, mask = layout.preproc_paths(tmp_path, Scan, "MNI", "4")
    assert image.relative_to(tmp_path).as_posix() == "sub-01/ses-b/anat/sub-01_ses-b_space-MNI_res-4_desc-preproc_T1w.nii.gz"
    assert mask.name == "sub-01_ses-b_space-MNI_res-4_desc-brain_mask.nii.gz"
    heatmap = layout.heatmap_path(tmp_path, Scan, "MNI", "4", "IG")
    native = layout.heatmap_path(tmp_path, Scan, "T1w", None, "IG")
    group = layout.group_map_path(tmp_path, "MNI", "4", "IG", "all")
    for path in (image, image.with_name("sub-01_ses-b_space-MNI_res-4_desc-preproc_T1w.json"), heatmap, native, group,
                 layout.fold_dir(tmp_path / "models", "rieke2018", 3) / layout.MODEL_CARD,
                 layout.fold_dir(tmp_path / "models", "rieke2018", 0) / layout.MODEL_CARD):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert [(p, n.key) for p, n in layout.find_preproc(tmp_path)] == [(image, "sub-01_ses-b")]
    assert [p for p, _ in layout.find_preproc(tmp_path, "01", ".json")] == [image.with_suffix("").with_suffix(".json")]
    assert layout.find_preproc(tmp_path, "02") == []
    assert [p for p, _ in layout.find_heatmaps(tmp_path, "MNI", "4")] == [heatmap]  # not the native-space map
    assert layout.heatmap_methods(tmp_path, "MNI", "4") == ["IG"]
    assert layout.group_map_methods(tmp_path, "MNI", "4") == ["IG"]
    assert layout.group_map_methods(tmp_path, "MNI", "2") == []
    assert layout.trained_folds(tmp_path / "models", "rieke2018") == [0, 3]
    assert layout.trained_models(tmp_path / "models") == ["rieke2018"]
    assert layout.sidecar_path(heatmap).name == "sub-01_ses-b_space-MNI_res-4_desc-IG_heatmap.json"
    assert layout.registration_figure(tmp_path, Scan).relative_to(tmp_path).as_posix() == \
        "sub-01/figures/sub-01_ses-b_desc-reg_T1w.svg"


def test_fmriprep_names_with_extra_entities_and_either_extension(tmp_path):
    class Scan:
        subject, session = "01", "a"

    names = ["sub-01/ses-a/anat/sub-01_ses-a_acq-mp2rage_space-MNI_res-2_desc-preproc_T1w.nii.gz",
             "sub-01/anat/sub-01_space-MNI_desc-preproc_T1w.nii",
             "sub-01/anat/sub-01_ses-b_space-MNI_desc-preproc_T1w.nii.gz",  # another session
             "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"]  # no space: the T1w's own grid
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    found = [(p.relative_to(tmp_path).as_posix(), n.get("res")) for p, n in layout.find_fmriprep_anat(tmp_path, Scan)]
    assert found == [(names[0], "2"), (names[1], None)]
    assert layout.fmriprep_mask(tmp_path / names[1]).name == "sub-01_space-MNI_desc-brain_mask.nii"


def test_to_label_keeps_letters_and_digits():
    assert layout.to_label("AD (probable)") == "ADprobable"
    assert layout.to_label("é-_") == "unknown"
    assert layout.is_label("AD01") and not layout.is_label("AD_01") and not layout.is_label("") \
        and not layout.is_label("é")


@pytest.mark.parametrize("control", [None, *layout.CONTROLS])
@pytest.mark.parametrize("channel", [None, *layout.CHANNELS])
@pytest.mark.parametrize("method", ["IG", "LRP", "GGC", "Saliency", "GuidedBackprop", "Occlusion", "SVM"])
def test_map_name_parses_back_what_it_builds(method, control, channel):
    name = layout.MapName(method, control, channel)
    assert layout.MapName.parse(name.desc) == name
    assert name.is_control == (control is not None)
    assert name.summed == layout.MapName(method, control)
    assert layout.is_label(name.desc)


@pytest.mark.parametrize("desc, expected", [
    ("IG", ("IG", None, None)), ("IGlogjacobian", ("IG", None, "logjacobian")),
    ("IGRandom", ("IG", "Random", None)), ("IGRandomlogjacobian", ("IG", "Random", "logjacobian")),
    ("IGRandomintensity", ("IG", "Random", "intensity")), ("Random", ("Random", None, None)),
    ("logjacobian", ("logjacobian", None, None)), ("SVMintensity", ("SVM", None, "intensity")),
])
def test_map_name_reads_the_desc_values_adheat_writes(desc, expected):
    name = layout.MapName.parse(desc)
    assert (name.method, name.control, name.channel) == expected
    assert name.desc == desc


@pytest.mark.parametrize("args", [("I_G",), ("IG", "Shuffled"), ("IG", None, "t2w"), ("",)])
def test_map_name_refuses_unknown_parts(args):
    with pytest.raises(ValueError):
        layout.MapName(*args)


def test_group_names_are_those_adheat_always_wrote(tmp_path):
    assert layout.group_table(tmp_path, layout.OVERLAP) == tmp_path / "group" / "overlap.tsv"
    assert layout.sidecar_path(layout.group_table(tmp_path, layout.CV_METRICS)).name == "cv_metrics.json"
    assert layout.overlap_figure(tmp_path, "IGRandom") == tmp_path / "group" / "figures" / "desc-IGRandom_overlap.png"
    assert layout.verdict_path(tmp_path, "rieke2018") == tmp_path / "rieke2018" / "verdict.json"
    assert layout.simulation_truth_path(tmp_path, "MNI", "4") == \
        tmp_path / "derivatives" / "simulation" / "space-MNI_res-4_desc-atrophy_probseg.nii.gz"
    figure = layout.overlap_figure(tmp_path, "SVM")
    figure.parent.mkdir(parents=True)
    figure.touch()
    (figure.parent / "notes_overlap.png").touch()
    assert layout.overlap_figures(tmp_path) == [figure]
