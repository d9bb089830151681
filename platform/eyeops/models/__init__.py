"""Model families, one package each, and the pieces they share.

- ``classifier/`` — timm backbone + multi-label head (fundus classification, OphGLM step 1);
- ``llm/`` — any Hugging Face causal LM: continued pretraining, then LoRA SFT (Ophtimus);
- ``vlm/`` — vision tower → connector → LM, AnyRes tiles (EyecareGPT);
- ``ophglm/`` — classifier image embedding + BERT [CLS] → fusion → LM prefix (OphGLM);
- ``healthgpt/`` — H-LoRA task adapters, image generation through VQ tokens (HealthGPT);
- ``common/`` — what several families share: recipe specs, hub/packaged model loading and the
  language-model builder, vision towers, connectors, AnyRes, H-LoRA, VQ, processing, generation.

Each family package has ``spec.py`` (its recipe section, pure pydantic) and ``family.py`` (the
:class:`eyeops.families.Family` object), imported lazily through :mod:`eyeops.families`, so
importing this package never pulls torch or timm.
"""
