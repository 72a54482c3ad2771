# raregen in a container: `docker compose --profile batch up -d` (see docker-compose.yml
# and docs/operations.md). Not built on the development machines (no Docker engine).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin raregen

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /nonexistent --shell /usr/sbin/nologin raregen
COPY --from=build /src/target/release/raregen /usr/local/bin/raregen
USER raregen
ENV RAREGEN__API__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fs http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["raregen"]
CMD ["serve"]
