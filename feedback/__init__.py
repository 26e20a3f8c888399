"""Tuneback feedback service: the store of completions, ratings and corrections.

This package never imports torch, ``retrain`` or ``serve``: it is the bottom of
the dependency graph, and everything else builds on its models and store.
Importing ``feedback.models`` or ``feedback.store`` does not load Flask.
"""
