"""Flower ServerApp of this project."""
