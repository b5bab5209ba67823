"""Helpers shared by the test modules: groups of real servers, data fingerprints, process
control for fault injection, the checks tests end with, and the reliability-table plugin."""
