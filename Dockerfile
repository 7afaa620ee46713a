# The mcdropout service. Models are mounted at /models (see docker-compose.yml).
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY mcdropout ./mcdropout
COPY service ./service
# gcc only for the install: it builds the engine's native kernels (mcdropout/_native.c), which the
# install would otherwise skip, leaving the slower numpy masks.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
    && pip install --no-cache-dir ".[serve]" \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
ENV MCD_MODELS_DIR=/models MCD_HOST=0.0.0.0 MCD_PORT=8000
EXPOSE 8000
CMD ["mcdropout", "serve"]
