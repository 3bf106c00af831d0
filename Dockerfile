# The bridge as an OCI image (docs/INSTALL.md, "Containers"): the moodle-offload wheel and its
# dependencies only, running as an unprivileged user, configured entirely by MRCO_* variables
# (or a config file / secret files mounted at run time).
#   docker build -t moodle-offload .
#   docker run --env-file offload.env -p 127.0.0.1:8765:8765 moodle-offload          # serve
#   docker run --env-file offload.env moodle-offload tick                             # one pass
#   docker run --env-file offload.env moodle-offload config check

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY offload_contract ./offload_contract
COPY moodle_bridge ./moodle_bridge
COPY certificate_render ./certificate_render
RUN python -m pip install --no-cache-dir --disable-pip-version-check -c constraints.txt build \
 && python -m build --wheel --outdir /wheels . \
 && python -m venv /opt/moodle-offload \
 && /opt/moodle-offload/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c constraints.txt /wheels/moodle_offload-*.whl

FROM python:3.11-slim-bookworm
COPY --from=build /opt/moodle-offload /opt/moodle-offload
RUN groupadd --system --gid 10001 offload \
 && useradd --system --uid 10001 --gid offload --no-create-home --shell /usr/sbin/nologin offload
ENV PATH=/opt/moodle-offload/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MRCO_LOG_FORMAT=json \
    MRCO_CALLBACK_BIND_HOST=0.0.0.0 \
    MRCO_CALLBACK_BIND_PORT=8765
USER 10001:10001
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["moodle-offload"]
CMD ["serve"]
