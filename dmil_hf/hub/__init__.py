"""Publishing to the Hub: the publisher (repo checks, uploads) and the model card (template shipped as package data)."""
