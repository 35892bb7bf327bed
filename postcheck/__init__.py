"""End-to-end post-check of a vLLM serving fleet: workers, load, Prometheus, dashboards."""

__version__ = "0.1.0"
