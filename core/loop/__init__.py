"""The training loop and its parts: the Trainer and its hooks, optimisers and schedules, freezing
strategies, checkpoints, EMA, mixing, the run log and the frozen-feature cache.
Imports base and adapters.
"""
