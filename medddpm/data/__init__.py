"""Scans in and volumes out: discovery and preflight (``scans``), MONAI preprocessing and the
intensity mapping (``transforms``), NIfTI reading, output geometry and atomic writes (``nifti``).

May import: ``medddpm.config``, ``medddpm.errors``, ``medddpm.output_folder``. Nothing here knows
about models or diffusion.
"""
