"""Fake servers for tests and the scale benchmark (not used by the post-check itself).

fakes.py    a vLLM-shaped state model, a fake vLLM (http.server threads), a fake Prometheus
            that answers the post-check's queries from the workers' state, a fake Grafana
aiofleet.py many fake vLLMs in one asyncio process (the benchmark's fleets)
"""
