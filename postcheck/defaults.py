"""Defaults the post-check assumes when the inventory does not say otherwise.

The inventory-derived values MIRROR the roles' defaults/main.yml: when a role changes one of
its defaults, change it here too (the hostvar names are the roles' public variable names).
"""

from __future__ import annotations

# Inventory groups.
GPU_WORKERS_GROUP = "gpu_workers"
MONITORING_GROUP = "monitoring"

# roles/prometheus/defaults/main.yml
PROMETHEUS_WEB_LISTEN_ADDRESS = "0.0.0.0:9090"
PROMETHEUS_SCRAPE_INTERVAL = "15s"

# roles/node_exporter/defaults/main.yml
NODE_EXPORTER_WEB_LISTEN_ADDRESS = "0.0.0.0:9100"

# roles/grafana/defaults/main.yml
GRAFANA_MODE = "local"  # local: a server on the monitoring host; external: grafana_url
GRAFANA_INSTALL_PACKAGE = True
GRAFANA_HTTP_ADDR = "0.0.0.0"
GRAFANA_HTTP_PORT = 3000
GRAFANA_ADMIN_USER = "admin"
GRAFANA_DASHBOARDS = ("vllm-fleet", "gpu-host")
GRAFANA_GATEWAY_GROUP = "gateways"
GRAFANA_VALIDATE_CERTS = True
# roles/grafana/vars/main.yml: the datasource uid every dashboard names, and the dashboard the
# role adds to grafana_dashboards only while the gateways group has hosts.
GRAFANA_DATASOURCE_UID = "prometheus"
GRAFANA_GATEWAY_DASHBOARD = "gateway"

# Prometheus job names the prometheus role renders from the inventory.
VLLM_JOB = "vllm"
NODE_JOB = "node"

# Load the post-check sends to every vLLM instance (per wave; see load.py).
REQUESTS = 24
CONCURRENCY = 8
INVALID_REQUESTS = 2
# Tokens each load completion generates (EOS ignored): long enough that a request holds its
# batch slot for a while, so with CONCURRENCY above --max-num-seqs requests keep queueing
# for the whole load and every Prometheus scrape in it sees the queue.
LOAD_MAX_TOKENS = 32

# A load whose /metrics polls have not yet seen every gauge above 0 (while its completions
# succeed) goes on for up to its length again, at least LOAD_EXTEND_MIN_S and at most
# LOAD_EXTEND_MAX_S seconds more: a busy controller's poll can miss the queue by chance.
LOAD_EXTEND_MIN_S = 2.0
LOAD_EXTEND_MAX_S = 10.0

# Environment variables the Grafana credentials are read from (never from the command line).
GRAFANA_USER_ENV = "GRAFANA_USER"
GRAFANA_PASSWORD_ENV = "GRAFANA_PASSWORD"
GRAFANA_TOKEN_ENV = "GRAFANA_TOKEN"  # a service account token instead of user and password

# Seconds one HTTP request may take before its check fails.
TIMEOUT_S = 15.0

# How long, beyond two scrape intervals, to wait for Prometheus to show what /metrics shows
# (scrape and query latency); at most one scrape interval.
PROMETHEUS_SLACK_S = 2.0

# Prometheus applies changed targets from service discovery at most every 5 s: a target that a
# config reload just added may have no `up` series for that long plus one scrape interval.
PROMETHEUS_DISCOVERY_S = 5.0

# Listen addresses whose host part means "every interface": reach them at the host's address.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})

# Threads for the independent checks of phase 1 (worker checks: I/O bound).
CHECK_THREADS = 64
# Every instance is loaded at the same time (a load holds --concurrency + 1 threads and as
# many sockets), within these budgets; beyond them loads run in rounds.
LOAD_THREAD_BUDGET = 2400
