# syntax=docker/dockerfile:1
# registry-bot's image:  docker build -t forgejo.viktorbarzin.me/viktor/registry-bot:<version> .
#
# Two stages on the same slim Debian Python image, so the virtual environment built in the first runs unchanged
# in the second:
#   build    makes /opt/venv: first the pinned dependencies (manifests/constraints.txt, the runtime closure of
#            pyproject.toml's dependencies), in their own layer so code changes reuse it; then the project itself
#            with --no-deps, then `pip check`. Every dependency ships a wheel, so no compiler is installed here
#            or anywhere. Then it leaves out what the bot never loads: the tests, test harnesses and type stubs
#            that packages ship, kubernetes/aio (an asyncio copy of the whole client, 66 MB; the bot uses the
#            synchronous one), githubkit's TypedDicts and webhook schemas (imported only by type checkers and
#            webhook code; its models stay, compiled on first import), and pip and setuptools (nothing is
#            installed at run time): on the Debian base of `make image`, whose image-test imports every module
#            the bot imports.
#   runtime  the same base, /opt/venv, and an unprivileged numeric user. Nothing else: no build tools, no
#            source tree. It runs with a read-only root filesystem (manifests/base/deployment.yaml); only /tmp is
#            written.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY manifests/constraints.txt ./constraints.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --requirement constraints.txt \
    && site=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$site/kubernetes/aio" \
    && rm -rf "$site"/githubkit_schemas/v*/types "$site"/githubkit_schemas/v*/webhooks \
              "$site"/githubkit_schemas/latest/types.py "$site"/githubkit_schemas/latest/webhooks.py \
    && find "$site/githubkit_schemas" -name __pycache__ -prune -exec rm -rf {} + \
    && find "$site" -depth \( -type d \( -name tests -o -name test -o -name testing \) \
       -o -type f \( -name '*.pyi' -o -name '*_test.py' -o -name '*_test.cpython-*.pyc' \) \) -exec rm -rf {} +
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/registry-bot --help >/dev/null \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="registry-bot" \
      org.opencontainers.image.description="Slack ChatOps bot that finds, fixes and verifies broken images on an OCI registry"
RUN groupadd --system --gid 10001 registry-bot \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/registry-bot --create-home \
       --shell /usr/sbin/nologin registry-bot
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The working directory is the user's own, so a local `docker run` with the default SQLite DATABASE_URL works;
# in the cluster DATABASE_URL names PostgreSQL and the root filesystem is read-only.
WORKDIR /var/lib/registry-bot
USER 10001:10001
EXPOSE 3000
ENTRYPOINT ["registry-bot", "serve"]
