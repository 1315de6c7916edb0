"""Reference-data generation for the examples: NaCl clusters and GFN2-xTB labels (tblite).

Not needed by the core library; imported only by the examples and tests."""
