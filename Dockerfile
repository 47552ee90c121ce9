# One CUDA-capable image for every role; the role is the command:
#   api (gunicorn), worker (Celery, queue gpu), beat (schedules + reaper), migrate, serve.
# torch/torchvision are the registry's CUDA wheels at the versions constraints.txt pins (the file
# `make` installs with), and every other package is installed under the same constraints; the wheels
# bring the CUDA runtime, so the host needs only the NVIDIA driver and container toolkit
# (docs/deployment.md). tests/service/test_docker_files.py keeps this file and constraints.txt in step.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ROBUSTAUDIT_HOME=/data \
    ROBUSTAUDIT_STORAGE_DIR=/data/storage

# bubblewrap: every uploaded model runs in a sandbox (see README, "Security"); util-linux for prlimit.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap util-linux \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, in its own layer: a code change does not download ~5 GB again
COPY constraints.txt ./
RUN pip install -c constraints.txt torch torchvision
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY api_spec ./api_spec
RUN pip install -c constraints.txt '.[service,timm,hf,onnx]' \
 && useradd --create-home --uid 10001 robustaudit \
 && mkdir -p /data/storage \
 && chown -R robustaudit /data
USER robustaudit

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["robustaudit"]
CMD ["api", "--bind", "0.0.0.0:8000", "--workers", "4"]
