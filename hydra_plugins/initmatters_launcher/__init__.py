"""Hydra launcher plugin of initmatters (discovered through the hydra_plugins namespace)."""
