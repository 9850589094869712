"""Parameter-efficient fine-tuning: PEFT (LoRA, QLoRA, IA3, ...) and the bottleneck adapters.
Imports only omnitune.core.base.
"""
