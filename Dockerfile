# The skutrain services (migrate, dispatcher, reconciler, api) on CPU. The GPU worker has its own
# image: services/trainer/Dockerfile.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# The CPU build of torch (the services validate configs and estimate memory; they never train).
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY db ./db
COPY services ./services
RUN pip install -e . \
 && useradd --create-home skutrain \
 && mkdir -p /data && chown skutrain /data

USER skutrain
ENV SKUTRAIN_DATA_DIR=/data SKUTRAIN_LOG_FORMAT=json
ENTRYPOINT ["skutrain"]
