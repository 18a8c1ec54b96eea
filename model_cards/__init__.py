"""Model card templates (Jinja/markdown) that ``hf_missing.hub`` renders; packaged as data."""
