# Speech-Transformer ASR server.
#   CPU image (default, slim):  docker build -t speech-transformer .
#   CUDA image:                 docker build --build-arg VARIANT=cuda -t speech-transformer:cuda .
#                               docker run --gpus all -p 8000:8000 speech-transformer:cuda
#   Ray Serve / KubeRay image:  docker build --build-arg EXTRAS=ray -t speech-transformer:ray .
# Settings are ASR_* environment variables (see app/config.py), e.g. -e ASR_API_KEY=... -e ASR_MAX_BATCH_SIZE=32.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# cpu: PyTorch's CPU-only wheels (no CUDA libraries, a much smaller image); cuda: PyPI's CUDA-enabled wheels.
ARG VARIANT=cpu
# Optional extras: EXTRAS=ray for the image a KubeRay RayService runs (deploy/rayservice.yaml).
ARG EXTRAS=
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN useradd --create-home --uid 10001 asr

# The same install as `make install`: a venv at ./.venv and an editable install of this project, so the server
# finds the shipped weights at <repo>/weights exactly as it does in a checkout. Torch first, in its own layer.
RUN python3 -m venv .venv \
 && if [ "$VARIANT" = "cpu" ]; then \
      .venv/bin/pip install --index-url "$TORCH_CPU_INDEX" torch==2.14.1 torchaudio==2.11.0; \
    fi
COPY pyproject.toml README.md ./
COPY app ./app
COPY model ./model
COPY recipe ./recipe
COPY bench ./bench
COPY importers ./importers
RUN .venv/bin/pip install -e ".${EXTRAS:+[$EXTRAS]}" && .venv/bin/python -c "import app.main, app.vad"
COPY weights ./weights

USER asr
ENV ASR_HOST=0.0.0.0 \
    ASR_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["speech-transformer", "health"]
CMD ["speech-transformer", "serve"]
