"""The optional LLM judge: the paper's Appendix C.2 question sent to any OpenAI-compatible
chat endpoint (vLLM serving Llama-3-70B-Instruct, or a hosted API).

A judge never stops an evaluation: a timeout, a failed request or a reply that is neither
yes nor no is counted and that sample keeps the deterministic check's verdict. The API key
comes from the environment variable the recipe names, and is never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import UserError
from ..recipe import JudgeConfig

# Appendix C.2 of the paper, word for word.
JUDGE_PROMPT = """You are an expert. Please determine whether the answers in the two responses to the \
following question are the same. If they are the same, reply with yes; if they are different, reply with no.
Note:
You do not need to provide any analysis just reply with yes or no.

**Question**:
{question}
**Response 1**:
{answer1}

**Response 2**:
{answer2}

Please make your judgment and provide your reply."""

_WORDS = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    question: str
    reference: str  # Response 1: the reference answer
    response: str  # Response 2: the model's whole output


class JudgeFailure(Exception):
    """A request that gave no verdict; `kind` is what it is counted under."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def judge_all(cfg: JudgeConfig, cases: Sequence[Case]) -> tuple[list[bool | None], dict[str, int]]:
    """A verdict per case (None where the judge gave none), and counts of what happened:
    `yes`, `no`, `timeout`, `error`, `unparseable`."""
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        outcomes = list(pool.map(lambda case: _verdict(cfg, case), cases))
    tally = Counter(kind for _, kind in outcomes)
    return [verdict for verdict, _ in outcomes], {kind: tally.get(kind, 0) for kind in
                                                  ("yes", "no", "timeout", "error", "unparseable")}


def check_reachable(cfg: JudgeConfig) -> None:
    """One request before the (long) generation: a judge that is down, or fails every request,
    is a setting to fix, not something to find out after the run. Later failures of single
    requests are counted and leave those samples to the exact check."""
    try:
        ask(cfg, Case("Is 2 the same as 2?", "2", "2"))
    except JudgeFailure as failure:
        if failure.kind != "unparseable":  # it answered: it is up
            raise UserError(f"eval.judge.url: the judge at {cfg.url} cannot be used ({failure}); start it, "
                            "fix eval.judge.url, or remove eval.judge to grade by exact match") from None


def _verdict(cfg: JudgeConfig, case: Case) -> tuple[bool | None, str]:
    try:
        verdict = parse_reply(ask(cfg, case))
    except JudgeFailure as failure:
        return None, failure.kind
    return verdict, "yes" if verdict else "no"


def ask(cfg: JudgeConfig, case: Case) -> str:
    """The judge's reply text to one case."""
    prompt = JUDGE_PROMPT.format(question=case.question, answer1=case.reference, answer2=case.response)
    body = json.dumps({"model": cfg.model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0, "max_tokens": 16}).encode()
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{cfg.url.rstrip('/')}/chat/completions", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout) as response:
            payload = json.loads(response.read())
    except TimeoutError as err:
        raise JudgeFailure("timeout", str(err)) from None
    except urllib.error.URLError as err:
        kind = "timeout" if isinstance(err.reason, TimeoutError) else "error"
        raise JudgeFailure(kind, str(err.reason)) from None
    except (OSError, ValueError) as err:  # connection reset, a body that is not JSON
        raise JudgeFailure("error", str(err)) from None
    try:
        return str(payload["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise JudgeFailure("unparseable", "no choices[0].message.content in the reply") from None


def parse_reply(reply: str) -> bool:
    """yes → True, no → False: the first word if it is one, else the only one of them said."""
    words = [word.lower() for word in _WORDS.findall(reply)]
    first = reply.strip().lower()
    for word, verdict in (("yes", True), ("no", False)):
        if first.startswith(word) and not first[len(word):len(word) + 1].isalpha():
            return verdict
    if len(set(words)) == 1:
        return words[0] == "yes"
    raise JudgeFailure("unparseable", f"neither yes nor no: {reply[:80]!r}")
