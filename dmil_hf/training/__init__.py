"""Training: the DMIL trainer and its arguments, and the data collator that feeds it."""
