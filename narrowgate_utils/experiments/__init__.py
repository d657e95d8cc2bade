"""Experiments behind the notebooks: each turns (adapter, samples, params) into tidy DataFrames.

One module per paper section; the notebooks only choose parameters, call these, plot and
interpret.
"""
