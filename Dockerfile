# The mcdropout service. Models are mounted at /models (see docker-compose.yml); deploy/kserve runs this image
# as a KServe predictor (docker build -t mcdropout:0.1.0 .).
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mcdropout ./mcdropout
COPY service ./service
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
    && pip install --no-cache-dir ".[serve]"
ENV MCD_MODELS_DIR=/models MCD_HOST=0.0.0.0 MCD_PORT=8000 MCD_GRPC_PORT=8001
EXPOSE 8000 8001
CMD ["mcdropout", "serve"]
