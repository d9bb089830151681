"""KFP pipelines (``finetune``); compiled IR lives in ``pipelines/compiled/`` (``make pipelines``)."""
