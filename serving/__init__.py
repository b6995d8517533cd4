"""Serving: profile tables and the budget selector (selector.py), the latency profiler (profile.py)."""
