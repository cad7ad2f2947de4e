"""Flower strategies of this project."""

from strategies.alignment_fedavg import AlignmentTrackingFedAvg
from strategies.resumable_fedavg import ResumableFedAvg

__all__ = ["AlignmentTrackingFedAvg", "ResumableFedAvg"]
