"""The pieces of benchmarks/serve_load.py: clients, servers, report."""
