"""Serving: profile tables and what a configuration is worth (selector.py), the latency profiler
(profile.py, decode_cost.py), and the budget-aware BentoML service (service.py) with the plain
modules of its request path behind it, one per stage: admission.py and upload.py (taking
requests), stages.py (probe, decode, model), predict.py and correction.py (predicted stage
times, corrected online), scheduler.py and runner.py (deadline order, the configuration chosen
across the queue, decode overlapping the model), response.py (the JSON); engine.py puts them
together (tables.py: which profile table), handler.py turns HTTP into a request and back;
options.py, errors.py, metrics.py, settings.py, timeout.py, testing.py."""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
