"""Language-model serving pieces: chat templates (and, later, foundation models, LoRA)."""
