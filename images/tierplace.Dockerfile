# syntax=docker/dockerfile:1
# The tierplace image: `tierplace operator` (the chart's Deployment) and `tierplace route` (the
# routers the operator creates) from one image. No torch: neither command imports it.
#   docker build -f images/tierplace.Dockerfile -t tierplace/tierplace:0.1.0 .
# No ENTRYPOINT: the operator's manifests pass the whole command line as args
# (["tierplace", "route", ...]).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY images/requirements-operator.txt /tmp/requirements.txt
RUN pip install --requirement /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The package's declared dependencies include torch and tritonserver: the router and the
# operator need neither, and requirements-operator.txt already installed what they import.
RUN pip install --no-deps . \
    && tierplace --help >/dev/null \
    && python -c "import tierplace.controller.handlers, tierplace.router.app"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tierplace" \
      org.opencontainers.image.description="tierplace operator and cascade router" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root, numeric (runAsNonRoot can check it); nothing is written outside /tmp, so the
# root filesystem can be read-only (the chart sets readOnlyRootFilesystem: true).
# A name for uid 65532: kopf (getpass.getuser) and Python's pwd lookups fail without one.
RUN echo "tierplace:x:65532:65532:tierplace:/tmp:/usr/sbin/nologin" >>/etc/passwd \
    && echo "tierplace:x:65532:" >>/etc/group
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9443
CMD ["tierplace", "--help"]
