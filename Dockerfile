# syntax=docker/dockerfile:1
# Build: dependencies first (cached until Cargo.toml/Cargo.lock change), then the code.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
# Migrations are embedded into the binary at compile time.
COPY migrations migrations
COPY src src
COPY scripts/release scripts/release
# dist/strata without debug info (what ships); dist/strata.debug stays in this stage.
RUN touch src/main.rs src/lib.rs && scripts/release

# Runtime: PostgreSQL client tools of every supported server version (pg_dump must
# be at least the server's major version; strata picks the matching one and names
# both versions when none is new enough).
FROM debian:bookworm-slim
# The client packages are not pinned on purpose: PGDG ships one version of each,
# and every image build should take its newest minor release (security fixes).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends \
       postgresql-client-14 postgresql-client-15 postgresql-client-16 postgresql-client-17 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/strata --create-home strata \
    && install -d -o strata -g strata -m 0700 /var/backups/strata
COPY --from=build /src/dist/strata /usr/local/bin/strata
COPY deploy/docker/healthcheck.sh /usr/local/bin/strata-healthcheck
# Works with a read-only root filesystem: strata writes only to the backup volume
# (and the local target's staging files there). Config, keys and tokens are
# mounted read-only as files (e.g. /run/secrets), referenced from the config.
VOLUME ["/var/backups/strata"]
USER 10001:10001
WORKDIR /var/lib/strata
ENV STRATA_CONFIG=/etc/strata/config.yaml \
    STRATA_LOG_FORMAT=json
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/strata-healthcheck"]
ENTRYPOINT ["/usr/local/bin/strata"]
CMD ["run"]
