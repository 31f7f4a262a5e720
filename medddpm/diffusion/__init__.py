"""The diffusion math: noise schedule and training objective (``schedule``), per-sample random
generators (``noise``), samplers with one signature, their timestep spacing and their registry
(``samplers``), and per-seed batched generation (``generate``).

May import: ``medddpm.errors``, ``medddpm.runtime``. Not ``medddpm.config``: the config reads the
sampler registry (its allowed names, eta defaults and bounds), so it sits above this package. No files,
no folders.
"""
