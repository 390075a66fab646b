# The pgquorum image: the agent beside PostgreSQL 15, one image for data members, witnesses and the
# operator. Built by kube/images.py (`python3 -m pgquorum.kube.images build --only pgquorum`), which
# passes the version from pyproject.toml and the host's CA bundle as a build secret:
#
#   podman build --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt -t localhost/pgquorum:0.1.0 .
#   podman run --rm localhost/pgquorum:0.1.0 --help
#
# The secret is mounted for the pip step only (BuildKit/buildah secret mount): it is in no layer.
# Without it (a machine whose TLS is not intercepted) pip uses its own CA bundle.

FROM debian:12-slim AS builder
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# The whole checkout minus .dockerignore: src/pgquorum/{agent,chaos,...} are symlinks to the top-level
# folders, which resolve inside /src.
COPY . /src
RUN --mount=type=secret,id=cacert,target=/run/secrets/cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && python3 -m venv /opt/pgquorum \
    && /opt/pgquorum/bin/pip install --no-warn-script-location /src \
    && /opt/pgquorum/bin/pip uninstall -y pip setuptools \
    && /opt/pgquorum/bin/pgquorum --help >/dev/null

FROM debian:12-slim
ARG PGQUORUM_VERSION=0.1.0
ARG PGQUORUM_SOURCE=local-checkout
LABEL org.opencontainers.image.title="pgquorum" \
      org.opencontainers.image.description="PostgreSQL HA agent (etcd leases with terms, self-fencing, quorum commit) with PostgreSQL 15" \
      org.opencontainers.image.version="${PGQUORUM_VERSION}" \
      org.opencontainers.image.source="${PGQUORUM_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PATH=/opt/pgquorum/bin:/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# PostgreSQL's optional JIT (llvmjit.so: libLLVM 105 MB + libz3 23 MB) is left out by dpkg path
# excludes, as -slim leaves out docs: with no provider library postgres runs without JIT (jit is
# for long analytic queries; an HA agent's OLTP members do not need it) and apt stays consistent.
# postgres with a fixed uid/gid (999) so Kubernetes' runAsNonRoot can check the numeric USER below.
RUN printf '%s\n' 'path-exclude /usr/lib/*/libLLVM-*.so*' 'path-exclude /usr/lib/*/libz3.so*' \
        'path-exclude /usr/lib/postgresql/*/lib/llvmjit*' 'path-exclude /usr/lib/postgresql/*/lib/bitcode/*' \
        > /etc/dpkg/dpkg.cfg.d/pgquorum-no-jit \
    && groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
    # Debian's package creates a cluster we never use: pgquorum runs initdb itself.
    && rm -rf /var/lib/postgresql/15/main /etc/postgresql/15/main \
    && install -d -o postgres -g postgres -m 0755 /var/lib/postgresql /etc/pgquorum \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
COPY --from=builder /opt/pgquorum /opt/pgquorum

USER 999:999
WORKDIR /var/lib/postgresql
EXPOSE 5432 8008
ENTRYPOINT ["pgquorum"]
CMD ["agent", "--config", "/etc/pgquorum/agent.yaml"]
