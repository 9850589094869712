"""Studies built from many runs: hyper-parameter search, cross-validation, data-size curves and
benchmark suites. They sit on top of the pipeline and import nothing above it.
"""
