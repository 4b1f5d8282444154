"""genloop: the lifecycle of a generative model, from raw data to a served, monitored, retrained product."""

__version__ = "0.2.0"
