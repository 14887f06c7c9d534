"""Fine-tune a BERT QA model on SQuAD, optionally with LAT's LengthDrop so every length configuration works.

Plain stage: the usual span cross-entropy. LengthDrop stage (sandwich rule, inplace distillation): each
step trains the full model on the task loss, then the smallest sub-model and N random sub-models on the
full model's own (detached) span distributions. Sub-model lengths shrink layer by layer by a random ratio
of at most `length_drop_ratio`; random sub-models also skip layers with probability `layerdrop`.

Cheaper stages for a CPU (issue #19): `teacher="frozen"` lets a frozen copy of the base model teach and trains only
the sub-models (the teacher runs forward, not forward and backward), and `freeze_layers` stops the gradient at
the embeddings and the first N encoder layers.

CPU-first: bf16 autocast where the CPU computes bf16 natively, a step or wall-clock budget (the learning-rate schedule follows whichever runs
out first), atomic checkpoints every few minutes, and `resume` to continue after an interruption.
"""
