# syntax=docker/dockerfile:1
# The application image: one image for the worker and the web app (docker-compose.yml runs it
# as both). Slim and pinned; the project is installed with pip (no test extras) into a virtual
# environment in a build stage, so pip's build backend and caches never reach the final image.
#
#   worker: python worker.py                                        (the default CMD)
#   web:    uvicorn web.app:app --host 0.0.0.0 --port 8000
#
# The base is pinned to an exact Python patch release and Debian release; to pin the digest too,
# build with --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml worker.py ./
COPY activities ./activities
COPY config ./config
COPY infra ./infra
COPY ledger ./ledger
COPY starter ./starter
COPY web ./web
COPY workflows ./workflows
# Every dependency ships binary wheels: no compiler is installed, in this stage or the next.
RUN /opt/venv/bin/pip install --no-cache-dir .
# Bytecode for every module, made here because the non-root user cannot write it into /opt/venv:
# the workflow sandbox imports the workflow code afresh for every run, and without a .pyc it
# compiles the source again each time (~30 ms per run, bench/RESULTS.md). Hash-checked .pyc
# stay valid whatever file times the copy into the final stage gives.
RUN /opt/venv/bin/python -m compileall -q -f --invalidation-mode checked-hash /opt/venv/lib

FROM ${PYTHON_IMAGE}
# No PYTHONDONTWRITEBYTECODE: the bytecode is compiled in the build stage (above).
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# A fixed non-root user. /data is the mount point of the shared data volume (REFERRAL_DATA_DIR):
# owned by that user, so a new named volume starts writable by it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app /data \
    && chown app:app /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code runs from the installed package; worker.py is the worker's entry script.
COPY worker.py ./
USER app:app
ENV REFERRAL_DATA_DIR=/data
EXPOSE 8000
# No HEALTHCHECK here: worker and web need different ones, docker-compose.yml has both.
CMD ["python", "worker.py"]
