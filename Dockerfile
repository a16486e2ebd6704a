# dicomflow with every back-end extra; one image, one role per container (see compose.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[kafka,elasticsearch,s3]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/dicomflow dicomflow \
    && mkdir -p /var/lib/dicomflow && chown dicomflow /var/lib/dicomflow
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER dicomflow
WORKDIR /var/lib/dicomflow
ENV DICOMFLOW_DATA_DIR=/var/lib/dicomflow \
    DICOMFLOW_LOG_JSON=true
EXPOSE 11112 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import sys; sys.exit(0)"
ENTRYPOINT ["dicomflow"]
CMD ["serve"]
