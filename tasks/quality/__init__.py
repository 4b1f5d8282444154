"""How good a model is: sample metrics, classical baselines, the image featurizer, measuring a model on
the held-out split, and the promotion gate."""
