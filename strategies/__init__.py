"""Flower strategies of this project."""

from strategies.alignment_fedavg import AlignmentTrackingFedAvg

__all__ = ["AlignmentTrackingFedAvg"]
