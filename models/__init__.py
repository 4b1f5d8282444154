"""Model families behind one small interface (models/common.py: GenerativeModel).

Each family is one file (vae, gan, gpt) importing only torch and numpy, so it runs on a bare GPU box,
and one entry in models/families.py, which holds what the rest of genloop must know about it and is
read without torch. models/export.py builds a family and saves or loads a model (safetensors + JSON).
"""

from pathlib import Path

from models.families import FAMILIES, Family, family, for_kind

__all__ = ["FAMILIES", "Family", "check_own_code", "family", "for_kind"]


def check_own_code(module_file: str) -> None:
    """In a served Bento (its src/ folder, beside bento.yaml, is the working folder) code must be the
    Bento's own: a Bento missing a module would otherwise import it from an installed copy of genloop."""
    here = Path.cwd().resolve()
    in_bento = here.name == "src" and (here.parent / "bento.yaml").is_file()
    if in_bento and not Path(module_file).resolve().is_relative_to(here):
        raise ImportError(
            f"{module_file} is not the code of the Bento in {here.parent}: it is incomplete, rebuild it"
        )


check_own_code(__file__)
