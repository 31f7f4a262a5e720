"""The diffusion math: noise schedule and training objective (``schedule``), per-sample random
generators (``noise``), samplers with one signature, their timestep spacing and their registry
(``samplers``), and per-seed batched generation (``generate``).

May import: ``medddpm.config``, ``medddpm.errors``, ``medddpm.runtime``. No files, no folders.
"""
