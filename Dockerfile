# syntax=docker/dockerfile:1
# adheat: BIDS App container image (see docs/containers.md).
#
#   docker build -t adheat/adheat:0.1.0 .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" \
#       -v /data/bids:/data/bids:ro -v /data/derivatives:/out \
#       adheat/adheat:0.1.0 /data/bids /out/adheat participant
#
# Base: the official PyTorch runtime image whose torch equals the pin in
# requirements.lock (torch==2.13.0). CUDA 12.6 is the "legacy" stable line of
# torch 2.13 and runs on the widest range of drivers (>= 525) and GPUs
# (Maxwell to Hopper). For Blackwell GPUs build with
#   --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
# (driver >= 580). The build stops if the base's torch differs from the lock.
# For bit-for-bit rebuilds, append the digest: pytorch/pytorch:<tag>@sha256:<digest>.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# ---------------------------------------------------------------------------
# builder: a virtual environment with adheat and its pinned dependencies
# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src

# Constraints = requirements.lock with its torch line replaced by the exact
# torch of the base image (e.g. 2.13.0+cu126). torch stays the base's CUDA
# build: the venv sees it through --system-site-packages, and the only torch
# the constraints allow is the one already installed, so pip cannot swap in a
# PyPI build. All other packages are pinned exactly as in the lock.
COPY requirements.lock setup.cfg ./
RUN lock_torch="$(sed -n 's/^torch==//p' requirements.lock)" \
    && base_torch="$(python -c 'import torch; print(torch.__version__)')" \
    && if [ "${base_torch%%+*}" != "${lock_torch}" ]; then \
         echo "base image has torch ${base_torch}; requirements.lock pins torch==${lock_torch}" >&2; exit 1; \
       fi \
    && sed "s/^torch==.*/torch==${base_torch}/" requirements.lock > constraints.txt \
    && python -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); print(c["options"]["install_requires"])' > requirements.txt \
    && python -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir -c constraints.txt -r requirements.txt

# The package itself: the context is an allowlist (.dockerignore), so this
# copies adheat_app/, boilerplate/ and the build files only. Dependencies are
# already satisfied by the layer above, which is rebuilt only when setup.cfg
# or the lock change.
COPY . .
RUN /opt/venv/bin/python -m pip install --no-cache-dir -c constraints.txt . \
    && /opt/venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "from", torch.__file__); assert not torch.__file__.startswith("/opt/venv/"), "pip installed a second torch into the venv"'

# ---------------------------------------------------------------------------
# runtime: same base, the venv, offline templates; no sources, no pip cache
# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
# The commit the image is built from: --build-arg VCS_REF="$(git rev-parse HEAD)"
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="adheat" \
      org.opencontainers.image.description="BIDS App: where a 3D CNN looks when it separates Alzheimer's disease from controls on T1w MRI, and whether that is where the disease is" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/adheat/adheat" \
      org.opencontainers.image.documentation="https://github.com/adheat/adheat/blob/main/docs/containers.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# HOME and every cache live under /tmp so that any UID (docker --user,
# Singularity) can write them; templates are read-only and never updated.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    XDG_CACHE_HOME=/tmp/.cache \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ADHEAT_CONTAINER_TYPE=docker \
    ADHEAT_CONTAINER_IMAGE=adheat/adheat:0.1.0

COPY --from=builder /opt/venv /opt/venv

# Fetch exactly the TemplateFlow files adheat reads and drop the rest of
# TemplateFlow's skeleton (templates.prefetch: the only step that needs
# network). TemplateFlow indexes its whole home at each run's first query:
# 0.7 s for the pruned home (32 files) against 13 s for the full skeleton
# (about 2,500), measured on a shared 2-core machine; and no empty placeholder
# is left that could start a download. Make it readable by any UID, add an
# unprivileged user.
RUN python -c "from adheat_app.templates import prefetch; print(*prefetch(prune=True), sep='\n')" \
    && chmod -R a+rX /opt/templateflow /opt/venv \
    && groupadd --gid 10001 adheat \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin adheat \
    && rm -rf /root/.cache \
    && find /tmp -mindepth 1 -delete

USER 10001:10001
WORKDIR /tmp

# Proof that runs never download: as the runtime user and with no network,
# the 2009c template comes from the prefetched TemplateFlow home. FireANTs
# (--registration fireants) runs on the base image's CUDA torch with
# `docker run --gpus all` (on the CPU without it); its optional fused CUDA ops
# need nvcc and are not built (FireANTs falls back to plain torch): check it
# imports beside that torch.
RUN --network=none adheat --version \
    && python -c "from adheat_app.templates import get_template; t = get_template(2.0, allow_fallback=False); assert t.source == 'templateflow', t.source; print(t.space, t.shape, 'offline from', *t.sources)" \
    && python -c "import fireants.registration.greedy" > /dev/null \
    && find /tmp -mindepth 1 -delete

ENTRYPOINT ["adheat"]
CMD ["--help"]
