# Build: docker build -t fanout .
# Run:   docker run -p 8084:8084 -e REDIS_HOST=redis -e JWT_SECRET="$(cat fanout-jwt.key)" fanout
#        (without a JWT key the daemon only admits loopback clients: none, inside a container)
# The one binary /fanout also holds the commands (docs/commands.md; /fanout help lists them):
#   a test token:   docker run --rm -e JWT_SECRET="$(cat fanout-jwt.key)" fanout /fanout token --username alice
#   print events:   docker run --rm -e FANOUT_TOKEN=… fanout /fanout tail --url ws://fanout-host:8084/ws
#   publish (kept in history): docker run --rm -e REDIS_HOST=redis fanout /fanout publish --username alice '{"type":"x"}'
FROM golang:1.26-alpine AS builder
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/fanout .

FROM alpine:3.22
RUN addgroup -S fanout && adduser -S -G fanout -H -s /sbin/nologin fanout
COPY --from=builder /out/fanout /fanout
USER fanout
EXPOSE 8084
HEALTHCHECK --interval=10s --timeout=3s CMD wget -qO- "http://127.0.0.1:${PORT:-8084}/health" >/dev/null || exit 1
CMD ["/fanout"]
