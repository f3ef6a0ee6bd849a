"""An Ollama `Modelfile` for an exported GGUF: the prompt as training rendered it, the recipe's
system prompt (which names the tags), the end-of-turn stop and greedy decoding, as evaluated."""

from __future__ import annotations

from typing import Any

from ..prep.render import render_prompt
from ..recipe import FormatConfig

# Placeholders no prompt contains, replaced by Ollama's template variables after rendering.
_SYSTEM, _PROMPT = "\x00system\x00", "\x00prompt\x00"


def modelfile(gguf_name: str, fmt: FormatConfig, tokenizer: Any) -> str:
    """The Modelfile's text; `ollama create NAME -f Modelfile` beside `gguf_name`."""
    with_marks = fmt.model_copy(update={"system_prompt": _SYSTEM if fmt.system_prompt else ""})
    template = (render_prompt(_PROMPT, with_marks, tokenizer)
                .replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}"))
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if fmt.system_prompt:
        lines.append(f'SYSTEM """{fmt.system_prompt}"""')
    stops = dict.fromkeys(token for token in (tokenizer.eos_token, tokenizer.pad_token) if token)
    lines += [f'PARAMETER stop "{token}"' for token in stops]
    lines.append("PARAMETER temperature 0")  # greedy, as the kit evaluates
    return "\n".join(lines) + "\n"
