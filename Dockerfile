# editbatch worker / producer / flower image.
#
# python:3.11-slim + the CUDA build of torch from PyPI: the CUDA runtime
# libraries come as pip wheels (nvidia-*), the driver is injected at run time
# by the NVIDIA Container Toolkit (docker-compose.yml reserves one GPU per
# worker). torchvision is never installed (diffusers and transformers do not
# need it, and a mismatched one breaks imports); the build fails if something
# pulls it in.
#
#   docker build -t editbatch .
#   docker compose up -d            # see docker-compose.yml

FROM python:3.11-slim

# Optional: an extra package index for a torch build that matches an older host
# driver (pip reads PIP_EXTRA_INDEX_URL); by default torch comes from PyPI.
ARG PIP_EXTRA_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HOME=/cache/huggingface

WORKDIR /opt/editbatch

# 1) Dependencies only (torch, diffusers, ... are the slow, large layer):
#    a stub package lets pip resolve them without the sources, so editing
#    src/ does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p src/editbatch && touch src/editbatch/__init__.py \
    && pip install ".[monitor,scores]" \
    && pip uninstall -y editbatch \
    && rm -rf src build *.egg-info

# 2) The package itself.
COPY src ./src
RUN pip install --no-deps ".[monitor,scores]" \
    && rm -rf build src/*.egg-info \
    && if pip show torchvision >/dev/null 2>&1; then echo "torchvision must not be installed" >&2; exit 1; fi \
    && editbatch --help >/dev/null

# Configs and the demo set live under /workspace, where docker-compose.yml
# also mounts data/ and runs/ (same paths in every container).
WORKDIR /workspace
COPY configs ./configs
COPY examples ./examples
RUN mkdir -p /workspace/data /workspace/runs "$HF_HOME"

CMD ["editbatch", "--help"]
