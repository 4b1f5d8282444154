"""The model registry: BentoML's model store (store.py), which version is champion of each model line
(champions.py), where a version came from (lineage.py) and its model card (card.py)."""
