"""compress: find the most accurate compressed model that meets a latency service level, measured."""

__version__ = "0.1.0"
