"""eye-llm (Ophtimus): any Hugging Face causal LM; packed continued pretraining, then LoRA SFT."""
