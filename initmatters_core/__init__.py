"""The science core: settings, seeding, the one training loop, federation helpers, metrics, the
results contract and the task plug-ins (tasks/). No Flower, no Hydra: the apps and command-line
tools (client_app/, server_app/, strategies/, initmatters/) adapt it to Flower and Hydra."""
