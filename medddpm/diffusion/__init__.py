"""The diffusion math: noise schedule and training objective (``schedule``), per-sample random
generators (``noise``), samplers with one signature, their timestep spacing and their registry
(``samplers``), and per-seed batched generation (``generate``).

May import: ``medddpm.errors``, ``medddpm.runtime``; ``medddpm.config`` for type hints only, because
``medddpm.config`` reads the sampler registry (its allowed names) and so imports ``samplers``. No
files, no folders.
"""
