"""Shared evaluator: frozen-feature protocols (linear probe, k-NN); more protocols follow."""
