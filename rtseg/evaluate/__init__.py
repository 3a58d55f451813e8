"""Scoring a model: Medico metrics, prediction on image folders, the paper's evaluation, layer and
threshold tuning, constant-mask baselines, figures."""
