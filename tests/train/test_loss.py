"""The loss: one mean over all loss tokens of an accumulated batch, never NaN; in a key stage
the gradient comes from key tokens only; 4-bit training gradients survive a loss probe."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sftkey_lora.data import DataReport
from sftkey_lora.data.synthetic import synthetic_split
from sftkey_lora.prep.collate import Collator, pad_id
from sftkey_lora.prep.masks import IGNORE
from sftkey_lora.prep.prepare import encode_examples
from sftkey_lora.prep.render import Segment
from sftkey_lora.recipe import FormatConfig, LoraSection, ModelConfig, TrainingConfig
from sftkey_lora.train.lora import attach_lora
from sftkey_lora.train.loss import (
    CHUNK_LOGITS,
    LabelledLogitsLoss,
    causal_lm_loss,
    projects_like_the_model,
    segment_losses,
)
from sftkey_lora.train.plan import training_arguments
from tests.support import model_on_cpu

pytestmark = pytest.mark.takes(120)

SHORT = FormatConfig(system_prompt="")  # short sequences keep these tests fast


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    """Eight examples, the first four with different numbers of key tokens."""
    examples = synthetic_split("train", n_train=60, n_test=1, seed=3)
    encoded = encode_examples(examples, tiny_tokenizer, SHORT, tagged=True, report=DataReport("t", "train"))
    by_count = {sum(row.in_key): row for row in encoded}
    varied = list(by_count.values())[:4]
    return varied + [row for row in encoded if row not in varied][: 8 - len(varied)]


def lora_model(tokenizer, quantized: bool):
    torch.manual_seed(0)
    cfg = ModelConfig(quantization="nf4" if quantized else "none")
    model = model_on_cpu(cfg, len(tokenizer))
    return attach_lora(model, LoraSection(r=4, dropout=0.0), gradient_checkpointing=False)


def gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    causal_lm_loss(outputs, batch["labels"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[n], b[n], atol=1e-7, rtol=0) for n in a)


def test_no_loss_token_gives_zero_not_nan(tiny_tokenizer, rows) -> None:
    model = lora_model(tiny_tokenizer, quantized=False)
    batch = Collator(pad_id(tiny_tokenizer), "key")(rows[:2])
    batch["labels"][:] = IGNORE
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = causal_lm_loss(outputs, batch["labels"], num_items_in_batch=torch.tensor(0))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_is_a_mean_over_the_tokens_of_the_whole_accumulated_batch(tiny_tokenizer, rows) -> None:
    """Micro-batch sums over the accumulated token count add up to the one-batch mean."""
    model = lora_model(tiny_tokenizer, quantized=False)
    collate = Collator(pad_id(tiny_tokenizer), "key")
    whole = collate(rows[:4])
    outputs = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"])
    expected = causal_lm_loss(outputs, whole["labels"])
    total = int((whole["labels"][:, 1:] != IGNORE).sum())
    parts = []
    for row in rows[:4]:
        part = collate([row])
        out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
        parts.append(causal_lm_loss(out, part["labels"], num_items_in_batch=torch.tensor(total)))
    assert torch.allclose(sum(parts), expected, atol=1e-6)


def one_step(tiny_tokenizer, rows, tmp_path, batch_size: int, accumulation: int, loss_func,
             hidden_only: bool = False) -> dict:
    from transformers import Trainer, TrainingArguments

    model = lora_model(tiny_tokenizer, quantized=False)
    if loss_func is LabelledLogitsLoss:
        loss_func = LabelledLogitsLoss(model.get_output_embeddings(), chunk_tokens=5)
    cfg = TrainingConfig(batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1,
                         learning_rate=1.0, optimizer="sgd", lr_scheduler="constant", warmup=0,
                         max_grad_norm=1e9, gradient_checkpointing=False)
    args = {**training_arguments(cfg, "fp32", tmp_path), "save_strategy": "no"}
    Trainer(model=model, args=TrainingArguments(**args), train_dataset=rows[:4],
            data_collator=Collator(pad_id(tiny_tokenizer), "key", hidden_only=hidden_only),
            compute_loss_func=loss_func).train()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def per_micro_batch_mean(outputs, labels, num_items_in_batch=None):
    """The usual mistake, for contrast: each micro-batch's own mean, averaged."""
    return causal_lm_loss(outputs, labels) / 4


def test_accumulating_4x1_equals_one_batch_of_4(tiny_tokenizer, rows, tmp_path) -> None:
    counts = {sum(r.in_key) for r in rows[:4]}
    assert len(counts) > 1, "the check needs examples with different numbers of key tokens"
    batch = one_step(tiny_tokenizer, rows, tmp_path / "a", 4, 1, causal_lm_loss)
    accumulated = one_step(tiny_tokenizer, rows, tmp_path / "b", 1, 4, causal_lm_loss)
    naive = one_step(tiny_tokenizer, rows, tmp_path / "c", 1, 4, per_micro_batch_mean)
    gap = max((batch[n] - accumulated[n]).abs().max().item() for n in batch)
    naive_gap = max((batch[n] - naive[n]).abs().max().item() for n in batch)
    assert gap < 1e-5
    assert naive_gap > 100 * gap + 1e-5  # the check would catch a per-micro-batch mean


@pytest.mark.parametrize("labels", ["full", "key"])
@pytest.mark.parametrize("quantized", [False, True])
def test_labelled_logits_loss_equals_the_full_logits_loss(tiny_tokenizer, rows, labels, quantized) -> None:
    """Projecting only labelled positions, 7 at a time, gives the loss and the gradients of
    the reference computation over full logits; the model itself returns no logits."""
    model = lora_model(tiny_tokenizer, quantized=quantized)
    head = model.get_output_embeddings()
    reference_batch = Collator(pad_id(tiny_tokenizer), labels)(rows[:4])
    reference_loss = causal_lm_loss(model(input_ids=reference_batch["input_ids"],
                                          attention_mask=reference_batch["attention_mask"]),
                                     reference_batch["labels"])
    reference_loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    batch = Collator(pad_id(tiny_tokenizer), labels, hidden_only=True)(rows[:4])
    projected: list[int] = []
    # Positions the head projects in the forward pass (the backward recomputes each chunk).
    hook = head.register_forward_hook(lambda module, args, out: projected.append(args[0].shape[:-1].numel()))
    labels_tensor = batch.pop("labels")
    outputs = model(**batch)
    loss = LabelledLogitsLoss(head, chunk_tokens=7)(outputs, labels_tensor)
    hook.remove()
    loss.backward()
    assert outputs.logits.shape[1] == 0  # no [batch, seq, vocab] logits from the model
    assert sum(projected) == int((labels_tensor[:, 1:] != IGNORE).sum())  # labelled positions only
    assert max(projected) <= 7
    assert torch.allclose(loss, reference_loss, rtol=1e-5, atol=1e-6)
    for name, grad in reference.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6), name


def test_labelled_logits_loss_with_no_loss_token_is_zero(tiny_tokenizer, rows) -> None:
    model = lora_model(tiny_tokenizer, quantized=False)
    batch = Collator(pad_id(tiny_tokenizer), "key", hidden_only=True)(rows[:2])
    labels = batch.pop("labels")
    labels[:] = IGNORE
    loss = LabelledLogitsLoss(model.get_output_embeddings())(model(**batch), labels, torch.tensor(0))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_trainer_step_is_the_same_with_labelled_logits(tiny_tokenizer, rows, tmp_path) -> None:
    full = one_step(tiny_tokenizer, rows, tmp_path / "a", 1, 4, causal_lm_loss)
    labelled = one_step(tiny_tokenizer, rows, tmp_path / "b", 1, 4, LabelledLogitsLoss, hidden_only=True)
    assert max((full[n] - labelled[n]).abs().max().item() for n in full) < 1e-5


def test_a_head_that_is_not_the_models_is_noticed(tiny_tokenizer, rows) -> None:
    model = lora_model(tiny_tokenizer, quantized=False)
    batch = Collator(pad_id(tiny_tokenizer), "key")(rows[:2])
    head = model.get_output_embeddings()
    assert projects_like_the_model(model, batch, head)
    scaled = torch.nn.Linear(head.in_features, head.out_features, bias=False)
    scaled.weight.data = head.weight.data * 2  # as an architecture that scales its logits
    assert not projects_like_the_model(model, batch, scaled)


@pytest.mark.parametrize(("labels", "segment", "changes"), [
    ("key", Segment.THINKING, False),  # stage 2: thinking tokens are context, never loss
    ("key", Segment.ANSWER, True),
    ("full", Segment.THINKING, True),  # stage 1 does learn the thinking
])
def test_which_labels_carry_gradient(tiny_tokenizer, rows, labels, segment, changes) -> None:
    """Change one target token of `segment` (the inputs stay as they are) and compare the
    adapter gradients on a 4-bit base, as in training."""
    model = lora_model(tiny_tokenizer, quantized=True)
    row = rows[0]
    position = list(row.segments).index(segment)
    perturbed_ids = row.input_ids.copy()
    perturbed_ids[position] = (perturbed_ids[position] + 1) % len(tiny_tokenizer)
    collate = Collator(pad_id(tiny_tokenizer), labels)
    batch = collate([row])
    perturbed = dict(batch, labels=collate([dataclasses.replace(row, input_ids=perturbed_ids)])["labels"])
    perturbed["input_ids"] = batch["input_ids"]
    assert same(gradients(model, batch), gradients(model, perturbed)) is not changes


def test_4bit_gradients_survive_an_eval_mode_probe(tiny_tokenizer, rows) -> None:
    """A loss probe in eval mode between steps must not change the training gradients."""
    model = lora_model(tiny_tokenizer, quantized=True)
    batch = Collator(pad_id(tiny_tokenizer), "full")(rows[:2])
    before = gradients(model, batch)
    model.eval()
    segment_losses(model, [Collator(pad_id(tiny_tokenizer), "full", with_segments=True)(rows[:2])])
    model.train()
    assert same(before, gradients(model, batch))


def test_segment_losses_split_thinking_from_key(tiny_tokenizer, rows) -> None:
    model = lora_model(tiny_tokenizer, quantized=False).eval()
    batch = Collator(pad_id(tiny_tokenizer), "key", with_segments=True)(rows[:2])
    losses = segment_losses(model, [batch])
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    key_only = causal_lm_loss(outputs, batch["labels"]).item()  # key labels: the same tokens
    assert losses["key"] == pytest.approx(key_only, rel=1e-5)
    assert losses["thinking"] > 0 and losses["thinking"] != pytest.approx(losses["key"])


@pytest.mark.parametrize("vocab", [570, 32_000, 151_936, 2**25])
def test_chunks_hold_a_bounded_number_of_logits(vocab) -> None:
    head = torch.nn.Linear(8, vocab, bias=False, device="meta")
    chunk = LabelledLogitsLoss(head).chunk_tokens
    assert chunk >= 1
    assert chunk * vocab <= max(CHUNK_LOGITS, vocab)  # one position at least, however large the vocabulary
    assert (chunk + 1) * vocab > CHUNK_LOGITS  # and as many as fit


def small_llama(tied: bool, setup: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    if setup == "full":  # every weight trains, the head's included
        return model
    return attach_lora(model, LoraSection(r=2, dropout=0.0), gradient_checkpointing=False,
                       new_token_ids=[60, 61] if setup == "tag rows" else None)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("setup", ["lora", "tag rows", "full"])
def test_trainable_head_parameters_get_the_full_logits_gradients(tied: bool, setup: str) -> None:
    """The head's own trainable parameters (tag rows, or the whole head in full mode) get the
    same gradients as with full logits, through chunks of 3 positions."""
    model = small_llama(tied, setup)
    ids = torch.tensor([[1, 60, 5, 61, 7, 9, 60, 2], [3, 4, 61, 6, 60, 8, 1, 1]])
    labels = ids.clone()
    labels[:, :2] = IGNORE
    labels[1, 6:] = IGNORE
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    causal_lm_loss(model(input_ids=ids), labels).backward()
    reference = {n: p.grad.clone() for n, p in trainable.items()}
    model.zero_grad()
    head = model.get_output_embeddings()
    assert any(p.requires_grad for p in head.parameters()) == (setup != "lora")
    outputs = model(input_ids=ids, output_hidden_states=True, logits_to_keep=torch.empty(0, dtype=torch.long))
    LabelledLogitsLoss(head, chunk_tokens=3)(outputs, labels).backward()
    for name, grad in reference.items():
        assert torch.allclose(trainable[name].grad, grad, rtol=1e-4, atol=1e-6), name


def full_logits_probe(model, batches) -> tuple[dict[str, float], torch.Tensor]:
    """The held-out losses and the log-probabilities at response positions, from whole logits."""
    import torch.nn.functional as F

    sums, counts, response = {"thinking": 0.0, "key": 0.0}, {"thinking": 0, "key": 0}, []
    with torch.no_grad():
        for batch in batches:
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
            logits = model(**inputs).logits[:, :-1].float()
            # Rows of the vocabulary, not its transpose: the same losses, twenty times faster on a CPU.
            losses = F.cross_entropy(logits.flatten(0, 1), batch["input_ids"][:, 1:].flatten(),
                                     reduction="none").view(logits.shape[:2])
            for name in sums:
                mask = batch[f"is_{name}"][:, 1:].bool()
                sums[name] += float(losses[mask].double().sum())
                counts[name] += int(mask.sum())
            response.append(F.log_softmax(logits[batch["labels"][:, 1:] != IGNORE], dim=-1))
    return {name: sums[name] / counts[name] for name in sums}, torch.cat(response)


@pytest.mark.slow
def test_probe_and_kl_at_151k_vocabulary_equal_whole_logits(real_models) -> None:
    """The held-out losses and the merge's KL, projected a chunk of positions at a time (110 at
    vocabulary 151,936, so several chunks here), equal the whole-logits figures within 1e-6."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkey_lora.prep.collate import batches
    from sftkey_lora.train.merge import kl_and_losses

    folder = real_models["qwen2-untied"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = synthetic_split("test", n_train=1, n_test=8, seed=2)
    rows = encode_examples(examples, tokenizer, FormatConfig(), tagged=True, report=DataReport("t", "test"))
    probe = list(batches(rows, 4, Collator(pad_id(tokenizer), "full", with_segments=True)))
    assert sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in probe) > 2 * 110
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    other = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        other.get_output_embeddings().weight.mul_(1.5)
    expected_losses, p = full_logits_probe(reference, probe)
    expected_other, q = full_logits_probe(other, probe)
    # In float64, a block of positions at a time: one 1 GB copy of each is ten times slower.
    expected_kl = sum(float(torch.nn.functional.kl_div(q_rows.double(), p_rows.double(), log_target=True,
                                                       reduction="sum"))
                      for p_rows, q_rows in zip(p.split(64), q.split(64), strict=True)) / len(p)
    losses = segment_losses(reference, probe)
    for name in ("thinking", "key"):
        assert losses[name] == pytest.approx(expected_losses[name], abs=1e-6)
    kl, other_losses = kl_and_losses(reference, other, probe)
    assert kl == pytest.approx(expected_kl, abs=1e-6)
    for name in ("thinking", "key"):
        assert other_losses[name] == pytest.approx(expected_other[name], abs=1e-6)
    assert expected_kl > 1e-3
