"""The tune stage's parts: the study and its workers (study), pruning inside training (pruning), and
what a study leaves for people (report). Its search space is checked when params load:
tasks/core/space.py."""
