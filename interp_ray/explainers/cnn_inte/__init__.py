"""CNN-INTE (Liu, Wang & Matwin, IJCNN 2018): a two-level clustering of one hidden layer and random forests over it,
giving every input a route level-1 → level-2 → votes → label (the reconstruction is described in ``explainer``).

``config`` (the validated settings, no estimators), ``meta_model`` (reading batches, k-means, forests, the estimator
file), ``explainer`` (``CnnInte``: fit, route, explain, report, save/load) and ``plots`` (the route and global
figures). Importing the package registers "cnn_inte" (the registry scan imports it).
"""

from interp_ray.explainers.cnn_inte.config import CnnInteConfig, CnnInteParams
from interp_ray.explainers.cnn_inte.explainer import CnnInte
from interp_ray.explainers.cnn_inte.meta_model import Route, iter_batches
from interp_ray.explainers.cnn_inte.plots import global_figure, route_diagram, route_figure

__all__ = ["CnnInte", "CnnInteConfig", "CnnInteParams", "Route", "global_figure", "iter_batches", "route_diagram",
           "route_figure"]
