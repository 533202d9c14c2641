# The Hodei platform services image: one image, the command picks the service
# (`hodei service api`, `hodei service relay`, `hodei migrate`).
#
# The build never reaches the network: it installs only the wheels in the `wheels/` folder of
# the build context, which `deploy/build-wheels.sh` fills (hodei and every dependency, built
# for the base image's CPython version). See deploy/README.md. BASE_IMAGE needs python3 with
# the venv module: python:3.11-slim, or where no registry is reachable the Debian base
# `hodei worker build-image` makes (hodei-base:bookworm).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS install
COPY wheels/ /wheels/
# A virtualenv so the final stage can take the installed tree in one COPY and leave the
# wheels behind; ensurepip bundles pip, so creating it needs no network either.
RUN python3 -m venv /opt/hodei \
 && /opt/hodei/bin/pip install --no-cache-dir --no-index --find-links /wheels hodei

FROM ${BASE_IMAGE}
ENV PATH=/opt/hodei/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/hodei
# A numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 hodei \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/hodei --create-home \
        --shell /usr/sbin/nologin hodei
COPY --from=install /opt/hodei /opt/hodei
USER 10001:10001
WORKDIR /home/hodei
# Every service drains on SIGTERM (runner.py): stop fetching, finish in-flight work within
# HODEI_DRAIN_GRACE_S, drain NATS, close the pool.
STOPSIGNAL SIGTERM
CMD ["hodei", "service", "api"]
