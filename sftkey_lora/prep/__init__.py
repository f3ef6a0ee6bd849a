"""From examples to batches: render to text with character spans, tokenize once into a
segment per token and each stage's labels, collate into batches (render, masks, collate);
`inspection` shows the result."""
