"""OphGLM: fundus-classifier embedding + BERT [CLS] -> fusion MLP -> LLM prefix tokens."""
