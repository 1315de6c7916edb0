"""ASE calculators: :class:`~snapqeq.calculators.cent.SnapQEqCalculator` (CENT and 4G
model files) and :class:`~snapqeq.calculators.snap.SNAPCalculator` (linear SNAP)."""
