"""fundus-classifier: timm backbone + multi-label BCE head (also OphGLM's image encoder)."""
