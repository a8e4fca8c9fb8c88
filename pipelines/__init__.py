"""The paper's experiments, end to end: prepare a dataset, extract, fit, ood-bench, report.

``python -m pipelines.run cifar10 --data-root data --work work --device cuda`` runs one
dataset; ``pipelines/README.md`` lists every dataset and its manual steps.
"""
