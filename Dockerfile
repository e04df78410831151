# One image for the skutrain services (migrate, dispatcher) and the local trainer.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY db ./db
COPY services ./services
RUN pip install --no-cache-dir -e .
ENV SKUTRAIN_DATA_DIR=/data SKUTRAIN_LOG_FORMAT=json
ENTRYPOINT ["skutrain"]
