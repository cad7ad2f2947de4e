"""The synthetic task: the paper's signal-plus-noise data and two-layer ReLU CNN.

Modules: `settings` (its data and model sections, checks), `data` (the data model), `partition`
(each client's labels and examples), `model` (the network and its logistic loss),
`initialization` (random, pre-trained, align-flip, misaligned fraction, checkpoint),
`alignment` (Definition 1 counts, signal learning gamma, noise memorization rho), `task`
(server setup and the client's local update).
"""
