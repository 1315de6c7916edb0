"""Training: samples with cached descriptors, the differentiable training-path evaluation,
the training loop and the export of TorchScript model files."""
