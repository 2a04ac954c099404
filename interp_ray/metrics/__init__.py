"""Metrics for explanations (saliency: pointing game, localisation error, deletion/insertion)."""
