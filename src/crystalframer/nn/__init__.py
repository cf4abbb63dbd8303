"""Network modules: basis functions, attention, encoder, heads (tensors in, tensors out)."""
