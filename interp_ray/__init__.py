"""interp-ray: train classifiers and their explainers on Ray, extract activations, serve explanations.

The package is Ray-free at import: nothing here starts Ray, touches the network or reads files when imported.
"""

__version__ = "0.1.0"
