"""Defaults the post-check assumes when the inventory does not say otherwise.

The inventory-derived values MIRROR the roles' defaults/main.yml: when a role changes one of
its defaults, change it here too (the hostvar names are the roles' public variable names).
"""

from __future__ import annotations

# Inventory groups.
GPU_WORKERS_GROUP = "gpu_workers"
MONITORING_GROUP = "monitoring"
GATEWAYS_GROUP = "gateways"

# roles/gateway/defaults/main.yml
GATEWAY_API_PORT = 8000
GATEWAY_METRICS_PORT = 8080
GATEWAY_QUEUE_SIZE = 100
GATEWAY_WORKER_GROUP = "gpu_workers"

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
GATEWAY_JOB = "gateway"

# The load (load.py). Every instance gets REQUESTS completions and INVALID_REQUESTS invalid
# ones (unknown model) at most COUNTER_IN_FLIGHT at a time, enough to prove its counters; a
# queue probe keeps its capacity + a margin in flight until its queue is proven.
REQUESTS = 8
INVALID_REQUESTS = 2
COUNTER_IN_FLIGHT = 4
# Which instances' queues are filled: one canary per served model. On a 500-GPU fleet after a
# rolling change every instance runs the same release and flags per model, so one canary per
# model proves the queue signal end to end, while filling all 500 queues (1024 slots each on
# H100/H200) would be a fleet-wide load test on production; counters prove every instance.
QUEUE_PROBE = "per-model"
# Tokens each load completion generates (EOS ignored): a request holds its batch slot about
# a second on a full H100/H200 batch, so requests are replaced about once a second while
# Prometheus is waited for (fewer requests than shorter ones, and a short drain).
LOAD_MAX_TOKENS = 32
# Where the capacity is not known (--worker without an inventory): start this many in flight
# and double while no request waits, up to the maximum.
RAMP_START_IN_FLIGHT = 16
RAMP_MAX_IN_FLIGHT = 4096
# /metrics polls of a queue probe during its load (slower on fleets with many probes).
POLL_INTERVAL_S = 0.2
# Before the load, each instance's counters are read this far apart: moved ones mean other
# traffic, and the counter checks become lower bounds.
TRAFFIC_WINDOW_S = 2.0
# The whole load ends by LOAD_DEADLINE_MIN_S + LOAD_DEADLINE_SCRAPES scrape intervals.
LOAD_DEADLINE_MIN_S = 60.0
LOAD_DEADLINE_SCRAPES = 4
# One load request's timeout (runner.request_timeout): the single completion's time scaled
# to the load's tokens and queue position, times this (a full batch decodes each sequence
# several times slower than a lone one; instances sharing a host slow each other down),
# at least the floor (the post-check's old fixed timeout), at most the load deadline.
FULL_BATCH_SLOWDOWN = 8.0
REQUEST_TIMEOUT_FLOOR_S = 15.0

# Environment variables the Grafana credentials are read from (never from the command line).
GRAFANA_USER_ENV = "GRAFANA_USER"
GRAFANA_PASSWORD_ENV = "GRAFANA_PASSWORD"
GRAFANA_TOKEN_ENV = "GRAFANA_TOKEN"  # a service account token instead of user and password

# Seconds one HTTP request of the checks before and after the load may take (--timeout).
TIMEOUT_S = 30.0

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
