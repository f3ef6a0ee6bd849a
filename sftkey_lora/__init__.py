"""sftkey-lora."""
