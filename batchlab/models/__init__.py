"""Flax (linen) models. They know nothing of timing, results or the roofline."""
