# syntax=docker/dockerfile:1
# lossbench, CUDA-enabled: the PyPI torch wheels carry the CUDA runtime, so a slim
# Python base is enough; the host supplies the driver through the NVIDIA Container Toolkit.
#   make docker          # build
#   make docker-repro    # docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD":/workspace lossbench
# Older drivers: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (see README).
# Behind a TLS-intercepting proxy: --secret id=ca,src=/path/to/proxy-ca-bundle.crt (used by pip, never stored).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
ARG WITH_TRITON=0

# git: DVC needs it for the bind-mounted repository. Pinned to bookworm's 2.39 series, not to one Debian
# revision: stable ships only security fixes within it, and an exact pin breaks the build the day the next
# fix replaces it. The version that ran is in every result's platform record.
# g++ (about 250 MB, +4% of the 6.5 GB image): torch.compile on the CPU builds C++, so compiled configurations
# run in the image on the CPU (docs/benchmarks.md: the decision and its sizes).
RUN apt-get update \
    && apt-get install -y --no-install-recommends "git=1:2.39.*" "g++=4:12.2.*" \
    && rm -rf /var/lib/apt/lists/*

# The same pinned requirements as `make repro`: one source of truth. Less triton (0.9 GB, +14%): torch.compile's
# backend on CUDA only; without it a compiled cuda configuration is *not run*, with the reason. Build with
# --build-arg WITH_TRITON=1 to keep it. The last line proves an eager Adam step still runs.
COPY requirements.txt /opt/lossbench/requirements.txt
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir --disable-pip-version-check \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /opt/lossbench/requirements.txt \
    && if [ "$WITH_TRITON" != 1 ]; then pip uninstall -y -q triton; fi \
    && python -c "import sys, torch; torch.backends.cuda.is_built() or sys.exit('build check: torch ' + torch.__version__ + ' was built without CUDA')" \
    && python -c "import torch; m = torch.nn.Linear(2, 2); o = torch.optim.Adam(m.parameters()); m(torch.ones(1, 2)).sum().backward(); o.step()"

COPY docker/entrypoint.sh /opt/lossbench/

# Determinism settings every run needs before CUDA initialises; HOME is writable by
# whatever uid `--user` picks, so git and DVC can keep their config there.
ENV CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    PYTHONHASHSEED=0 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lossbench
RUN mkdir -m 1777 /home/lossbench /workspace

USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["/opt/lossbench/entrypoint.sh"]
# `make repro`'s command: this machine's pipeline (results/<machine>/), then the overview
CMD ["python", "-m", "lossbench.workflow", "repro"]
