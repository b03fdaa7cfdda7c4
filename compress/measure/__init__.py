"""Measurement without torch: latency, capacity, stability, paired verdicts, the host lock."""
