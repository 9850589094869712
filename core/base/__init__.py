"""The base every other part stands on: errors, registries and plug-ins, the recipe schema, the task
contract, data reading and splitting, assets, metrics, seeding and the generation settings.
Imports nothing above it.
"""
