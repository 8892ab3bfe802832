# The production image: one image for the server and the workers (docker-compose.yml runs both).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/svp-label

# torch from the PyTorch index named by TORCH_INDEX, installed before the package. The default
# is CPU wheels: PyPI's bundle CUDA (gigabytes) that CPU workers never use. The GPU worker image
# (compose profile "gpu") builds with a CUDA index, e.g. .../whl/cu126: those wheels carry the
# CUDA runtime themselves, so this slim base works and the host needs only the NVIDIA driver and
# container toolkit. This layer changes only when the index or the pin does, so code changes
# rebuild in seconds.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" \
        "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY svp ./svp
COPY migrations ./migrations
COPY frontend ./frontend
# Installed in place (editable): the server serves frontend/ from beside the app package, and
# frontend/ is not a Python package that a wheel would carry.
RUN pip install -e .

RUN useradd --create-home --uid 10001 svp \
    && mkdir -p /data \
    && chown svp /data
USER svp

# The data dir: the server's uploads as they arrive, and each process's own caches. With
# SVP_STORAGE_URL (as in compose) item bytes and embedding shards are in the object store and no
# two containers need to share this folder, except the importer, which reads the server's uploads.
ENV SVP_DATA_DIR=/data \
    SVP_ENVIRONMENT=production
VOLUME ["/data"]
EXPOSE 8000

# `serve` migrates the database first; workers run `svplabel worker` from the same image (boto3,
# the object store's client, is one of the package's own dependencies).
CMD ["svplabel", "serve", "--host", "0.0.0.0", "--port", "8000"]
