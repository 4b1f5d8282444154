"""Prefect flows: composition of the stage tasks only (no model code, no torch import)."""
