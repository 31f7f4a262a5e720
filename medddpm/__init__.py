"""medddpm: 3D denoising diffusion for medical volumes (train, sample, evaluate NIfTI scans)."""

__version__ = "0.1.0"
