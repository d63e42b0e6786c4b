# syntax=docker/dockerfile:1
# Build: dependencies first (cached until Cargo.toml/Cargo.lock change), then the code.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Runtime: PostgreSQL client tools of every supported server version (pg_dump must
# be at least the server's major version; strata picks the matching one).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends \
       postgresql-client-14 postgresql-client-15 postgresql-client-16 postgresql-client-17 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/strata --create-home strata
COPY --from=build /src/target/release/strata /usr/local/bin/strata
USER strata
WORKDIR /var/lib/strata
ENV STRATA_CONFIG=/etc/strata/config.yaml
ENTRYPOINT ["/usr/local/bin/strata"]
CMD ["run"]
