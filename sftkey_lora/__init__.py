"""sftkey-lora: two-stage SFTKey fine-tuning (a LoRA adapter on the whole tagged response,
merged; a second one on the key tokens after the thinking), its evaluation and comparison.

The Python API (`sftkey_lora.api`); every command of the CLI is one of these calls.
"""

from .api import compare, evaluate, export, load_recipe, run, set_verbosity, significance
from .errors import UserError
from .recipe import Recipe

__all__ = ["Recipe", "UserError", "compare", "evaluate", "export", "load_recipe", "run", "set_verbosity",
           "significance"]
