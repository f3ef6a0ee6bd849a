"""The paper's Tag format: `<Thinking>…</Thinking><Answer>…</Answer>`, no whitespace between."""

THINK_OPEN = "<Thinking>"
THINK_CLOSE = "</Thinking>"
ANSWER_OPEN = "<Answer>"
ANSWER_CLOSE = "</Answer>"
ALL_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
