"""How a model family is trained: the Lightning module around it, data on the device, the Trainer with
its callbacks, resume and export. Imports torch and Lightning (not Prefect), so it runs on a bare GPU box."""
