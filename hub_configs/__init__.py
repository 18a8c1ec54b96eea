"""Presets as data: one JSON file per (method, dataset), read by :mod:`hf_missing.presets`.

This is a package only so that the JSON files ship in wheels beside ``hf_missing``.
"""
