"""The reproduction job's stages, one module per method; the engine imports every module here (a ``_private`` one
excepted). Each defines ``NAME``, ``run(section, seed, workdir)`` and ``rows(per_seed, section)``
(``jobs.reproduce.engine``'s docstring)."""
