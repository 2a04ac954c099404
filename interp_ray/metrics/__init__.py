"""Metrics for explanations: ``captions`` (sentence metrics), ``saliency`` (pointing game, localisation error,
deletion/insertion AUC). Submodules are imported where used, so this package stays cheap to import."""
