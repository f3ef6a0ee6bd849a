"""The built-in offline model `builtin:tiny`: a small Llama-architecture causal LM.

Its byte-level BPE tokenizer is trained here on synthetic text that includes tagged
responses, so merges across tag boundaries really occur (as they do in real models).
The model is then pre-trained on *untagged* synthetic problems, so it can already do
the arithmetic before fine-tuning teaches it the Tag format. `sftkey-lora build-tiny`
rebuilds it; the result ships in `sftkey_lora/builtin/tiny/`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .data.synthetic import synthetic_split
from .prep.render import render, render_prompt
from .recipe import PAPER_SYSTEM_PROMPT, FormatConfig
from .rundir.files import empty_temporary, replace_dir
from .rundir.layout import Claim
from .rundir.lock import refuse_foreign

EOS = "<|endoftext|>"
VOCAB_SIZE = 2048


def untagged_text(prompt: str, thinking: str, answer: str) -> str:
    """Pre-training text: the base prompt layout with an untagged worked solution."""
    fmt = FormatConfig(system_prompt="")
    return f"{render_prompt(prompt, fmt)}{thinking}{fmt.untagged_separator}{answer}"


def train_tokenizer(corpus: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE with single-digit numbers (as Llama 3 and Qwen split digits)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def tokenizer_corpus(seed: int) -> list[str]:
    """Untagged problems, tagged renderings and the system prompt."""
    problems = synthetic_split("pretrain", 4000, 200, seed)
    tagged_fmt = FormatConfig()
    texts = [untagged_text(e.prompt, e.thinking, e.answer) for e in problems[:3000]]
    texts += [render(e, tagged_fmt, tagged=True).text for e in problems[3000:]]
    return texts + [PAPER_SYSTEM_PROMPT] * 20


def build_tiny(
    output: Path, steps: int = 3000, seed: int = 0, n_problems: int = 60000, eval_problems: int = 50
) -> dict[str, float]:
    """Train tokenizer and model from scratch, save them to `output` (a new directory or an
    earlier model, replaced whole), report competence."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    refuse_foreign(Claim(output, "config.json"))  # never replace a directory of other files
    set_seed(seed)
    tokenizer = train_tokenizer(tokenizer_corpus(seed))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    texts = [untagged_text(e.prompt, e.thinking, e.answer)
             for e in synthetic_split("pretrain", n_problems, 200, seed)]
    final_loss = pretrain(model, tokenizer, texts, steps, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = empty_temporary(output)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    output.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(tmp, output)  # a kill never leaves half a model where the kit loads it from
    accuracy = untagged_accuracy(model, tokenizer, eval_problems, seed)
    return {"final_loss": final_loss, "untagged_test_accuracy": accuracy}


def pretrain(model, tokenizer, texts: list[str], steps: int, seed: int) -> float:
    """Causal-LM training with the transformers Trainer; returns the last logged loss."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    def tokenize(example: dict[str, str]) -> dict[str, list[int]]:
        ids = tokenizer(example["text"])["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": ids, "labels": list(ids)}  # eos labelled even though pad == eos

    train_set = Dataset.from_dict({"text": texts}).map(tokenize, remove_columns=["text"])
    with tempfile.TemporaryDirectory() as scratch:  # Trainer wants an output_dir; nothing kept
        args = TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=32,
            learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=min(100, steps // 10),
            weight_decay=0.01, logging_steps=max(1, steps // 20), save_strategy="no",
            report_to=[], seed=seed, data_seed=seed, use_cpu=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_set,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][-1]


def untagged_accuracy(model, tokenizer, n: int, seed: int) -> float:
    """Greedy answers to held-out test problems, asked in the pre-training layout."""
    import torch

    correct = 0
    model.eval()
    for example in synthetic_split("test", 1, n, seed):
        prompt = render_prompt(example.prompt, FormatConfig(system_prompt=""))
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=160, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        found = re.search(r"The answer is (\d+)", text)
        correct += bool(found and found.group(1) == example.answer)
    return correct / n
