"""Helpers every layer may import (model, video, training, serving, benchmarks): standard
library only, and nothing of the repository."""
