# seglab in a container: `docker build -t seglab .`, then (README, "In a container")
#   docker run --rm seglab demo
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/my_data:/data:ro" -v "$PWD/runs:/runs" \
#       seglab train /data --out /runs/mine
#   docker run -p 8000:8000 -e SEGLAB_TOKEN -v "$PWD/runs/mine:/models:ro" \
#       seglab serve -m /models/best.pt --host 0.0.0.0
# Any base with Python >= 3.11 works, or a bare Debian 12 or later (its python3 is installed then).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The torch pins of the Makefile. TORCH_INDEX_URL picks another wheel index for them, e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for CPU-only wheels (a smaller image).
ARG TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_INDEX_URL=""

ENV VIRTUAL_ENV=/opt/seglab \
    PATH=/opt/seglab/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

# A base without Python (a bare Debian) gets the distribution's python3 and venv (with its pip).
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --create-home --uid 1000 --shell /bin/bash seglab

# torch first, in a layer of its own: the largest download, and nothing after it may pull another torch.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_PINS

# seglab's dependencies (and the serve extra) from pyproject.toml alone: this layer is rebuilt
# only when pyproject.toml changes, not on every source change.
COPY pyproject.toml /tmp/seglab/pyproject.toml
RUN python -c 'import tomllib; project = tomllib.load(open("/tmp/seglab/pyproject.toml", "rb"))["project"]; \
print("\n".join(project["dependencies"] + project["optional-dependencies"]["serve"]))' > /tmp/seglab/requirements.txt \
    && pip install -r /tmp/seglab/requirements.txt $TORCH_PINS \
    && rm -r /tmp/seglab

# seglab itself, built as a wheel from the context (the bundled ISBI slices become package data,
# so the demo needs no data folder). The source copy is deleted, but its layer stays (about 15 MB):
# a RUN --mount of the context would not be, but some builders reuse such a step's cache after
# the mounted files change.
COPY . /tmp/seglab-src
RUN pip install "/tmp/seglab-src[serve]" $TORCH_PINS \
    && pip check \
    && rm -r /tmp/seglab-src

USER seglab
WORKDIR /home/seglab
# Matplotlib's cache where any user may write: `docker run --user UID:GID` (to write into a host
# folder as yourself) cannot write to /home/seglab.
ENV MPLCONFIGDIR=/tmp/matplotlib

EXPOSE 8000
# Healthy while `seglab serve ... --host 0.0.0.0` answers on its default port 8000.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["seglab"]
CMD ["--help"]
