"""The genloop service (BentoML): the API in front of a model, its request bodies, guard, records and page."""
