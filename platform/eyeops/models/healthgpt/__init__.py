"""HealthGPT: H-LoRA task adapters over an LVLM; image generation through VQ tokens."""
