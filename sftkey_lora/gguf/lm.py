"""lm-eval's generation requests answered by llama.cpp on a GGUF file.

The `sftkey_*` tasks only generate, so only `generate_until` is answered, as lm-eval's own
Hugging Face model answers it: the prompt tokenized without an added bos (special tokens in
the text parsed), greedy decoding until an end-of-generation token or `max_gen_toks`, special
tokens left out of the text, and the text cut at the first stop string. lm-eval's own `gguf`
model needs a llama.cpp server and its log-probabilities; this runs the file in-process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from ..errors import UserError
from .llamacpp import binding

MAX_CONTEXT = 4096  # tokens of prompt and answer held at once: the tasks' prompts are short


class LlamaCppLM(LM):
    def __init__(self, path: Path, lora: Path | None = None) -> None:
        super().__init__()
        self.llama_cpp = binding()
        n_ctx = min(trained_context(path) or MAX_CONTEXT, MAX_CONTEXT)
        try:
            self.llm = self.llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=os.cpu_count(),
                                            lora_path=str(lora) if lora else None, verbose=False, seed=0)
        except ValueError:  # llama.cpp says only that it failed
            raise UserError(f"{path}: llama.cpp cannot load it (not a GGUF model file, damaged, or of an "
                            "architecture this llama.cpp does not run)") from None
        self.vocab = self.llama_cpp.llama_model_get_vocab(self.llm.model)

    def close(self) -> None:
        """Frees the model now (the binding's own finaliser fails when left to interpreter exit)."""
        self.llm.close()

    def token_text(self, token: int) -> str | None:
        """The text of a token of the file's vocabulary; None past its end."""
        if not 0 <= token < self.llama_cpp.llama_vocab_n_tokens(self.vocab):
            return None
        return self.llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def foreign_to(self, tokenizer: Any) -> str | None:
        """Where the file's vocabulary differs from `tokenizer`'s added tokens (special tokens
        and tags, the ones prompts and grading rely on): a GGUF of another model; None if not."""
        for token, added in sorted(tokenizer.added_tokens_decoder.items()):
            found = self.token_text(token)
            if found is None:
                return f"the tokenizer's {added.content!r} (id {token}) is past the file's vocabulary"
            if found != added.content:
                return f"token {token} is {found!r} in the file, {added.content!r} in the tokenizer"
        return None

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def greedy(self, prompt: list[int], max_new: int) -> list[int]:
        """Up to `max_new` greedy tokens after `prompt`, the end-of-generation token left out."""
        tokens: list[int] = []
        limit = self.llm.n_ctx() - len(prompt)
        for token in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if self.llama_cpp.llama_vocab_is_eog(self.vocab, token) or len(tokens) >= min(max_new, limit):
                break
            tokens.append(token)
        return tokens

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in requests:
            context, settings = request.args
            max_new = int(settings.get("max_gen_toks", 256))
            prompt = self.tokenize(context)[-(self.llm.n_ctx() - max_new):]  # left-truncated, as lm-eval does
            text = self.llm.detokenize(self.greedy(prompt, max_new)).decode("utf-8", errors="replace")
            for stop in settings.get("until") or []:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError("the sftkey_* tasks only generate; a GGUF is graded on them alone")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the sftkey_* tasks only generate; a GGUF is graded on them alone")


def trained_context(path: Path) -> int | None:
    """The context length the file declares (`<architecture>.context_length`); None where it
    cannot be read, which llama.cpp then reports."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
        architecture = fields["general.architecture"].contents()
        return int(fields[f"{architecture}.context_length"].contents())
    except (OSError, ValueError, KeyError):
        return None
