"""The main job's stages, one module per method (and one for the classifiers every other stage explains). Each
registers itself with ``@pipeline_stage`` and ``@reports`` from ``jobs.pipeline.engine``; the engine imports every
module here (a ``_private`` one excepted) the first time it needs the registry. A new method's stage is a new file.
"""
