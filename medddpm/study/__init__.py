"""``medddpm study``: blinded reader studies (visual Turing tests) of synthetic against real volumes.

- ``statistics``: pure functions on readers' decisions: accuracy with its Wilson interval and exact
  binomial test, sensitivity / specificity, ROC AUC from confidence ratings, Cohen's and Fleiss' κ, a
  bootstrap over readers and cases, Mann-Whitney on ratings, Spearman against automatic scores, power;
- ``tasks``: the three tasks (binary, 2afc, rating) as one table: questions, how an answer is scored;
- ``pages``: preprocessed volumes -> blinded PNG slice stacks and a self-contained reader page;
- ``build``: pick and preprocess the volumes, write the readers' folders, key.json and study.json;
- ``responses``: read answers (the server's append-only logs, the pages' exported files);
- ``server``: serve the readers' pages and receive their answers (standard library only);
- ``analysis``: key + answers -> every number of analysis.json, as plain data;
- ``report``: that result -> report.html, report.md and answers.csv;
- ``analyze``: check the report folder, read, compute, render and publish REPORT_DIR.

Within the package each module imports only those listed before it. May import: ``errors``,
``output_folder``, ``data``, ``evaluation.measure`` (the preprocessing ``medddpm evaluate`` uses, so
real and synthetic volumes are shown alike), ``evaluation.report`` (the house CSS),
``audit.neighbours`` (nearest-real correlation, the automatic score tied to the readers' verdicts),
``preview``.
"""
