"""SNAP bispectrum descriptors (the C++ kernel through ``snapqeq._sna``) and their
differentiable torch wrapper for training."""
