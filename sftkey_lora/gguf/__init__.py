"""GGUF: the format llama.cpp and the tools built on it (Ollama, LM Studio) run. An export
converted by llama.cpp's own converters, quantized by its quantizer, graded through its runtime."""
