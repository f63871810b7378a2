# Prometheus from Debian's package, for docker-compose.yml: it builds wherever Debian's mirrors are
# reachable, registry or not. Its configuration and rules are mounted by compose (prometheus.yml, rules.yml).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o prometheus -g prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
            "--web.listen-address=:9090"]
