"""Flower ClientApp of this project."""
