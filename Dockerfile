# The remediator service image. compose.yaml also runs the simulated router (demo/) from it.
FROM python:3.11-slim

# curl: the runbook scripts in demo/scripts call the NATS monitoring port and the router's admin API.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The package first, so a change to rules or playbooks does not re-run pip.
COPY pyproject.toml ./
COPY service ./service
RUN pip install --no-cache-dir .
COPY rules ./rules
COPY playbooks ./playbooks
COPY demo ./demo
COPY alertmanager ./alertmanager

RUN useradd --system --uid 10001 --home-dir /var/lib/remediator remediator \
    && mkdir -p /var/lib/remediator \
    && chown remediator /var/lib/remediator
USER remediator
ENV PYTHONUNBUFFERED=1 \
    BEAMLINE_PYTHON=python3 \
    BEAMLINE_STATE_DIR=/var/lib/remediator/beamline

EXPOSE 9095
CMD ["remediator", "serve", "--config", "/etc/remediator/remediator.yaml"]
