# The pgquorum agent beside PostgreSQL 15, one image for data members and witnesses.
# Not built in CI (this machine has no container engine); the operator issue builds and loads it into kind.
#
#   docker build -t pgquorum:dev .
#   docker run --rm pgquorum:dev pgquorum --help
FROM debian:12-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/pgquorum/bin:/usr/lib/postgresql/15/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    # Debian's package creates a cluster we never use: pgquorum runs initdb itself.
    && rm -rf /var/lib/postgresql/15/main /etc/postgresql/15/main

COPY pyproject.toml README.md /src/
COPY src /src/src
COPY agent /src/agent
COPY operator /src/operator
COPY local /src/local
COPY ctl /src/ctl
RUN python3 -m venv /opt/pgquorum \
    && /opt/pgquorum/bin/pip install /src \
    && rm -rf /src

# Non-root, as PostgreSQL requires: the agent runs postgres as itself.
USER postgres
WORKDIR /var/lib/postgresql
EXPOSE 5432 8008
ENTRYPOINT ["pgquorum"]
CMD ["agent", "--config", "/etc/pgquorum/agent.yaml"]
