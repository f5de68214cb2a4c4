"""ARC test-time post-training: split a challenges file into chunks, fine-tune a checkpoint per
chunk on its demonstration pairs, predict its test inputs, merge the per-chunk submissions."""
