"""Model families behind one small interface (models/common.py: GenerativeModel).

Each family is one file (vae, gan, gpt) importing only torch and numpy, so it runs on a bare GPU box,
and one entry in models/families.py, which holds what the rest of genloop must know about it and is
read without torch. models/export.py builds a family and saves or loads a model (safetensors + JSON).
"""

from models.families import FAMILIES, Family, family, for_kind

__all__ = ["FAMILIES", "Family", "family", "for_kind"]
