# traind image: the CLI, supervisor and worker. EXTRA=tf (CPU TensorFlow) or EXTRA=gpu (TensorFlow with CUDA wheels).
#   docker build -t traind:cpu .            docker build --build-arg EXTRA=gpu -t traind:gpu .
FROM python:3.11-slim

ARG EXTRA=tf
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TRAIND_STORAGE_DIR=/data/traind

WORKDIR /app
COPY . .
RUN pip install ".[${EXTRA}]" \
    && useradd --create-home --uid 1000 traind \
    && mkdir -p /data/traind \
    && chown traind:traind /data/traind

# A named volume mounted here starts with this directory's owner, so the unprivileged user can write checkpoints.
VOLUME ["/data/traind"]
USER traind
ENTRYPOINT ["traind"]
CMD ["--help"]
