"""Hyper-parameter sweeps on Optuna: the study and its workers (`study`), the search space
(`space`), one trial's workdir and process (`trial`, `launcher`), and the summary of a study (`summary`)."""
