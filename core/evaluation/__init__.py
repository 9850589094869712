"""Evaluation and reports: the run report and model card, per-group metrics, retention checks and
the diagnosis of a finished run. Imports base, adapters, loop and the run folder.
"""
