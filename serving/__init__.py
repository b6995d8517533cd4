"""Serving: profile tables and the budget selector (selector.py), the latency profiler
(profile.py, decode_cost.py), and the budget-aware BentoML service (service.py) with the plain
modules behind it: engine.py, tables.py, handler.py, upload.py, options.py, correction.py, errors.py,
metrics.py, settings.py."""
