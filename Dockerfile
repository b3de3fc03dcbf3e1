# syntax=docker/dockerfile:1
# The control plane served by Daphne, as a non-root user. Every setting comes
# from the environment (see README.md); secrets may come from *_FILE paths.
#
#   docker build -t controlplane .
#   docker run --rm -e DATABASE_URL=... -e REDIS_URL=... -e SECRET_KEY_FILE=/run/secrets/key \
#       controlplane python manage.py migrate --noinput      # migrations: a separate, documented step
#   docker run -p 8000:8000 -e ... controlplane               # serve

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
RUN /opt/venv/bin/pip install '.[server]'
COPY manage.py ./
COPY templates ./templates
COPY static ./static
# Static files are collected at build time; WhiteNoise serves them.
RUN CONTROLPLANE_HOME=/src DEBUG=false SECRET_KEY=build-only CONTROLPLANE_VAR_DIR=/tmp/var \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 REDIS_URL=redis://127.0.0.1:1/0 \
    /opt/venv/bin/python manage.py collectstatic --noinput -v0 \
    && mv /tmp/var/static /src/staticfiles

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 CONTROLPLANE_HOME=/app \
    CONTROLPLANE_VAR_DIR=/var/lib/controlplane STATIC_ROOT=/app/staticfiles
RUN useradd --system --uid 10001 --home /app controlplane \
    && mkdir -p /var/lib/controlplane && chown controlplane /var/lib/controlplane
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /src/manage.py ./
COPY --from=build /src/templates ./templates
COPY --from=build /src/static ./static
COPY --from=build /src/staticfiles ./staticfiles
USER controlplane
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["daphne", "--bind", "0.0.0.0", "--port", "8000", "controlplane.asgi:application"]
