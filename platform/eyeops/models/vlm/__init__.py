"""eye-vlm (EyecareGPT): vision tower -> layer-wise dense connector -> causal LM, with AnyRes."""
