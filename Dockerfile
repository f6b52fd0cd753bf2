# The gateway on a slim Python base, running as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY examples ./examples
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv/gateway --create-home gateway
COPY --from=build /install /usr/local
COPY config /etc/gateway
WORKDIR /srv/gateway
USER gateway
EXPOSE 8080
# In a container, listen on every interface: set `server.listen.host: 0.0.0.0` in the
# mounted config (the shipped one binds to 127.0.0.1).
ENTRYPOINT ["gateway", "run"]
CMD ["-c", "/etc/gateway/gateway.yaml"]
