"""``medddpm evaluate``, measuring apart from rendering:

- ``features``: feature networks (MedicalNet-style 3D ResNets); ``metrics``: metrics as pure functions;
- ``reconstruction``: an autoencoder's reconstruction against its scan (PSNR, SSIM, MAE, correlation);
- ``conditions``: each set's per-file conditions, metrics per stratum and the condition check (a
  classifier / regressor on the real features predicting what each sample requested);
- ``ceiling``: a latent run's autoencoder ceiling (the real scans encoded and decoded by its autoencoder);
- ``specs``: the table of reported metrics (key, label, direction, format, caveat, summary wording)
  that every output below reads;
- ``measure``: two folders -> every number of metrics.json, as a typed result (the measuring side);
- ``report``: that result -> report.html, report.md and the console table (the rendering side);
- ``evaluate``: measure, render and publish REPORT_DIR.

Within the package each module imports only those listed before it. May import: ``medddpm.config``,
``errors``, ``runtime``, ``preview``, ``output_folder``, ``data``, ``models.spaces`` (a latent run's
autoencoder, for its ceiling).
"""
